"""``FineTuner``: a backbone with a new linear head, trained on an image source."""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
import random
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import replace
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted
from torch import nn
from torch.utils.data import DataLoader

from featpipe.backbones import Backbone, get_backbone
from featpipe.backbones.base import input_dtype
from featpipe.backbones.registry import BackboneSpec
from featpipe.data.folder import folder_enclosing
from featpipe.data.images import check_decode
from featpipe.data.source import ImageSource
from featpipe.device import amp_dtype, cudnn_autotune, on_device, resolve_device
from featpipe.distributed import progress_bar, refuse_other_settings
from featpipe.errors import (
    ConfigError,
    HeadMismatchError,
    StoreInUseError,
    StoreWriteError,
    TrainingDivergedError,
    WorkerDiedError,
)
from featpipe.evaluate.metrics import DEFAULT_BOOT, compute_metrics
from featpipe.extract.inference import Inference
from featpipe.finetune import checkpoint, ddp, probe
from featpipe.finetune.callbacks import (
    Callback,
    Checkpoint,
    EarlyStopping,
    HistoryLogger,
    ProgressPrinter,
)
from featpipe.finetune.data import (
    AUGMENTATIONS,
    SourceDataset,
    image_loader,
    loader,
    split_rows,
    train_transform,
)
from featpipe.finetune.freezing import (
    Mode,
    check_mode,
    freeze,
    frozen_by,
    set_train_mode,
    training_batch_norm,
)
from featpipe.finetune.recipe import (
    OPTIMIZERS,
    build_optimizer,
    max_grad_norm,
    param_groups,
    warmup_cosine,
)
from featpipe.heads.selection import no_better_than_one_class
from featpipe.interrupt import Interrupted, dead_worker, deferred
from featpipe.store import FeatureStore
from featpipe.store.lock import StoreLock, describe_owner, lock_path, read_owner

# Parameters that change no result (the one list): a resumed run may change them, and a
# pipeline leaves them out of its config hash.
NOT_RESULT_PARAMS = ("callbacks", "device", "resume", "run_dir", "verbose", "workers")
# Settings added after runs were recorded, with the default they had before: left out of
# config hashes and checkpoint configs while at it, so that those runs still resume.
LATER_DEFAULTS = {
    "loss": "cross_entropy",
    "decode": "exact",
    "sync_bn": False,
    "max_grad_norm": None,  # as resolved (result_params): no cap, as every mode had
}
LOSSES = ("cross_entropy", "mse")
# The backbone's identity (``Backbone.identity()``) in checkpoint configs: what its spec
# leaves out (a weights file rewritten under its path, a release's preprocessing or pooling).
IDENTITY = "backbone_identity"
# Settings LP-FT's probe does not read (it fits on the backbone's eval features of the train
# and val rows): a grid's candidates that differ only in these share one probe.
NOT_PROBE_PARAMS = (
    *("callbacks", "resume", "run_dir", "verbose", "workers", "epochs", "lr"),
    *("backbone_lr_scale", "optimizer", "momentum", "weight_decay", "warmup_epochs"),
    *("label_smoothing", "loss", "dropout", "augment", "patience", "sync_bn", "max_grad_norm"),
)
# What a partial:N fine-tune froze (``freezing.frozen_by``), in its checkpoint config.
FROZEN = "frozen"
# The precision the fine-tune computes at (``probe.own_compute``'s; its decode is the decode
# setting), in its checkpoint config: the device's (fp32 on the CPU, bf16 or fp16 autocast on
# CUDA) is no setting, yet a run trained at one and continued at another reports as either.
PRECISION = "precision"
LATER = (IDENTITY, FROZEN, PRECISION)  # checkpoint config keys that older checkpoints lack
# What _restore reads from last.pt (fit_seconds and fit_process_seconds are optional: older
# checkpoints lack them).
RESUMED_KEYS = (
    *("config", "epoch", "model", "optimizer", "scheduler", "rng", "history"),
    *("best_epoch", "best_score", "stopped", "probe"),
)


def result_params(params: dict) -> dict:
    """The settings of ``params`` that change a result, as configs and hashes hold them
    (numpy scalars as Python numbers: checkpoints load plain types only). ``max_grad_norm``
    is held as the cap the mode trains with (``"auto"`` resolved), so a mode with no cap
    keeps the hash it had before the setting existed."""
    if "max_grad_norm" in params and "mode" in params:
        kind = Mode.parse(params["mode"]).kind
        params = {**params, "max_grad_norm": max_grad_norm(params["max_grad_norm"], kind)}
    return {
        k: v.item() if isinstance(v, np.generic) else v
        for k, v in params.items()
        if k not in NOT_RESULT_PARAMS and (k not in LATER_DEFAULTS or v != LATER_DEFAULTS[k])
    }


class FineTuner(ClassifierMixin, BaseEstimator):
    """Fine-tune ``backbone`` with a new linear head on the classes of an ``ImageSource``.

    Evaluation uses the backbone's own preprocessing (the one extraction uses); training adds
    RandomResizedCrop + flip at the same crop size (``augment="standard"``). ``mode`` is
    ``full``, ``partial:N`` (stages 0 to N-1 of ``Backbone.stages`` frozen, stage 0 being the
    stem), ``bn`` (batch norm frozen), ``head`` (only the new head trains), ``lpft`` (head
    starts from a logistic-regression probe on pooled train features, then everything trains)
    or ``scratch`` (the same architecture from random initialisation, ``@none`` weights, with
    the same recipe and splits: the baseline a transfer result is read against; with nothing
    pretrained to preserve, the backbone learns at the head's rate, ``backbone_lr_scale`` 1).

    ``max_grad_norm`` caps the global norm of the gradient at each step (0 or None: no cap);
    ``"auto"`` caps LP-FT's at 10 (its fitted head amplifies backbone steps, and unclipped it
    ran away in its first epoch) and leaves the other modes uncapped.

    ``loss`` is ``cross_entropy`` or ``mse`` (squared error between the softmax output and
    the one-hot target, label-smoothed like cross-entropy's); validation and test metrics are
    the same for both. ``dropout`` sits in front of the new linear head.

    The epoch with the best validation accuracy (ties: lower val loss) is kept; with
    ``patience`` set (0 or None: never), training stops after that many epochs without
    improvement. With ``run_dir`` the run writes ``history.jsonl``, ``best.pt`` and
    ``last.pt`` there and, with ``resume=True``, continues from ``last.pt`` when its
    configuration matches; one fit at a time holds ``run_dir`` (a second is refused).
    ``verbose``: 0 silent, 1 a line per epoch, 2 also progress bars within epochs.

    ``decode="fast"`` reads JPEG files at the smallest DCT scale that still covers the resize
    (evaluation) or the smallest random crop (training); see ``featpipe extract --decode``.

    Under torchrun, ``fit`` trains one replica per process (``DistributedDataParallel``;
    ``batch_size`` stays the global batch), evaluates exactly on each rank's share of the rows,
    and only rank 0 writes and prints (see :mod:`featpipe.finetune.ddp`). ``sync_bn``: batch
    norm statistics over the global batch (``SyncBatchNorm``; GPUs only, DDP only).
    ``world_size_`` is the number of processes that trained. ``fit_seconds_``: wall seconds of
    training over every resumed piece; ``fit_process_seconds_``: each piece's seconds once per
    process of that piece (a run may resume on another number of processes).

    Labels are class indices into ``class_names_`` (``classes_`` is ``arange(C)``), as in
    ``ImageSource.labels``.
    """

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        *,
        mode: str = "full",
        epochs: int = 10,
        batch_size: int = 32,
        lr: float = 0.01,
        backbone_lr_scale: float = 0.1,
        optimizer: str = "sgd",
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        warmup_epochs: float = 1.0,
        label_smoothing: float = 0.1,
        max_grad_norm: float | str | None = "auto",
        loss: str = "cross_entropy",
        dropout: float = 0.2,
        augment: str = "standard",
        image_size: int | None = None,
        decode: str = "exact",
        val_fraction: float = 0.1,
        sync_bn: bool = False,
        patience: int | None = 3,
        probe_C: float | str = "auto",
        device: str = "auto",
        seed: int = 0,
        run_dir: str | Path | None = None,
        resume: bool = True,
        workers: int = 0,
        callbacks: list[Callback] | None = None,
        verbose: int = 2,
    ):
        self.backbone = backbone
        self.mode = mode
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.backbone_lr_scale = backbone_lr_scale
        self.optimizer = optimizer
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.warmup_epochs = warmup_epochs
        self.label_smoothing = label_smoothing
        self.max_grad_norm = max_grad_norm
        self.loss = loss
        self.dropout = dropout
        self.augment = augment
        self.image_size = image_size
        self.decode = decode
        self.val_fraction = val_fraction
        self.sync_bn = sync_bn
        self.patience = patience
        self.probe_C = probe_C
        self.device = device
        self.seed = seed
        self.run_dir = run_dir
        self.resume = resume
        self.workers = workers
        self.callbacks = callbacks
        self.verbose = verbose

    # ---------------------------------------------------------------- fit

    def fit(
        self,
        source: ImageSource,
        y=None,
        *,
        probe_features: FeatureStore | None = None,
        fingerprint: str | None = None,
        keyed_run_dir: bool = False,
        probes: dict | None = None,
    ) -> FineTuner:
        """Train on the source's train split, select the epoch on val (carved from train,
        stratified and seeded, when the source has none). ``y`` is ignored.

        Epoch 0 is the model before training; for LP-FT that is the probe, so fine-tuning
        that does not beat the probe on val returns the probe. ``probe_features``: a store
        with the ``pooled`` features of this backbone (same spec, weights and image size)
        over this source, e.g. the one a pipeline extracted; LP-FT's probe then reads its
        features from it instead of running the backbone over train and val (a store made
        from anything else raises StoreMismatchError). Other modes do not use it.

        ``fingerprint``: the source's fingerprint as the caller checked it (a pipeline's, over
        file contents with ``source.hash_contents``, its run folder keyed by it), recorded in
        the checkpoint instead of the sizes-and-mtimes one, so files touched but unchanged do
        not stop a resume; a checkpoint holding the latter resumes while it matches.
        ``keyed_run_dir``: True where the caller keys ``run_dir`` and cannot set resume=False
        (a pipeline): a checkpoint that cannot be resumed names its folder to delete instead.
        ``probes``: LP-FT probes fitted by earlier fits of this source and ``probe_features``
        (a grid's candidates), reused where no setting the probe reads differs; this fit's
        probe is added."""
        mode = self._check_params()
        if not isinstance(source, ImageSource):
            named = f" {source!r}" if isinstance(source, str | Path) else ""
            raise ConfigError(
                f"FineTuner.fit takes an ImageSource; got {type(source).__name__}{named}. Open "
                "one first: featpipe.data.open_source('digits'), or open_source(a folder's path)."
            )
        self._fingerprint = fingerprint
        self._probes = {} if probes is None else probes
        self._start_over = (
            f"Delete the run folder {self.run_dir} to start over." if keyed_run_dir else None
        )
        self.device_ = resolve_device(self.device)
        with on_device(self.device_), cudnn_autotune(self.device_), ddp.joined(self.device_):
            own = ("callbacks", "device", "verbose", "workers")  # each rank's own to set
            refuse_other_settings(self.get_params(), "fine-tune", source=source, own=own)
            # Before the run folder is made: a mode the backbone cannot take leaves nothing.
            self.backbone_ = get_backbone(spec_for(self.backbone, mode), self.image_size)
            check_mode(mode, self.backbone_.stages)
            check_one_classifier(self.backbone_)
            check_run_dir_outside(source, self.run_dir)
            with self._run_dir_held():
                return self._fit(mode, source, probe_features)

    @contextlib.contextmanager
    def _run_dir_held(self) -> Iterator[None]:
        """One fit at a time in ``run_dir``: a second one, started meanwhile, is refused (two
        would overwrite each other's checkpoints, and one failed on the other's files). Rank 0
        holds the lock; every rank hears its refusal."""
        if self.run_dir is None:
            yield
            return
        made = _missing(Path(self.run_dir)) if ddp.is_main() else []
        try:
            with self._run_dir_locked():
                yield
        except BaseException:
            _remove_if_unused(made)  # a fit refused before training leaves nothing behind
            raise

    @contextlib.contextmanager
    def _run_dir_locked(self) -> Iterator[None]:
        with contextlib.ExitStack() as held:
            refused = None
            if ddp.is_main():
                try:
                    Path(self.run_dir).mkdir(parents=True, exist_ok=True)
                    held.enter_context(StoreLock(Path(self.run_dir) / checkpoint.LAST, timeout=0))
                except StoreInUseError:
                    owner = describe_owner(read_owner(Path(self.run_dir) / checkpoint.LAST))
                    refused = StoreInUseError(
                        f"The run folder {self.run_dir} is in use by {owner}: another fine-tune "
                        "is training in it. Wait for it to finish (the same command then "
                        "resumes its finished run), or use another run_dir (CLI: --run-dir)."
                    )
                except StoreWriteError:
                    pass  # no lock file here (a read-only folder of a finished run): unguarded
                except OSError as exc:  # a file of that name
                    refused = ConfigError(
                        f"Cannot make the run folder {self.run_dir} ({exc.strerror or exc}). Use "
                        "a run_dir you can write to (CLI: --run-dir)."
                    )
            refused = ddp.from_main(refused)
            if refused:
                raise refused
            yield

    def _fit(
        self, mode: Mode, source: ImageSource, probe_features: FeatureStore | None
    ) -> FineTuner:
        started = time.perf_counter()
        self.world_size_ = ddp.world_size()
        self._rank_batch = ddp.per_rank_batch(int(self.batch_size), self.world_size_)
        self.source_ = source
        self.class_names_ = list(source.classes)
        self.classes_ = np.arange(len(self.class_names_))
        self.train_rows_, self.val_rows_, self.val_carved_ = split_rows(
            source, self.val_fraction, self.seed
        )
        _check_two_classes(source, self.train_rows_)
        saved = self._resumable(source)
        # Which run best.pt and last.pt belong to (see checkpoint.settle_best).
        self._run = saved.get("run") if saved else uuid.uuid4().hex
        self.history_, self.stop_training_, self.start_epoch_ = [], False, 0
        self.saved_epoch_, self.fit_seconds_, self.fit_process_seconds_ = None, 0.0, 0.0
        try:
            train_loader = self._train_loader(source, self.train_rows_)
            _check_steps(len(train_loader), len(self.train_rows_), self.world_size_)
            fitted_probe = None
            if mode.kind == "lpft" and saved is None:  # a resumed run restores it from last.pt
                fitted_probe = self._fit_probe(self.train_rows_, probe_features)
            self._build(mode, len(train_loader), fitted_probe)
            self._check_batch_of_one(train_loader)
            if saved is not None:
                self._restore(saved)
            replica = ddp.wrap(self.model_, self.device_)  # what training steps run through
            self._clock = (started, self.fit_seconds_, self.fit_process_seconds_)

            callbacks = self._callbacks()
            for cb in callbacks:
                cb.on_fit_start(self)
            if saved is None:
                self._end_epoch(
                    {
                        "epoch": 0,
                        "train_loss": None,
                        "world_size": self.world_size_,
                        **self._validate(),
                        **self._start_notes(),
                    },
                    callbacks,
                )
            epoch = self.history_[-1]["epoch"]
            while epoch < self.epochs and not self.stop_training_:
                epoch += 1
                logs = {
                    "epoch": epoch,
                    **self._train_epoch(replica, train_loader, epoch),
                    "world_size": self.world_size_,
                    **self._validate(),
                }
                self._end_epoch(logs, callbacks)
            # Seconds stop at the last epoch's end, as last.pt records them: a finished run
            # run again reports the cost it reported, not that plus its set-up.
            self.model_.load_state_dict(self._best_weights)
            self.model_.eval()
            warn_if_probe_cannot_choose(self, stacklevel=4)
            warn_if_val_cannot_choose(self, f"epoch {self.best_epoch_}", stacklevel=4)
            for cb in callbacks:
                cb.on_fit_end(self)
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM under handle_sigterm()
            raise Interrupted.from_exception(exc).with_message(self.interrupted_message()) from None
        except (RuntimeError, ConnectionResetError, EOFError) as exc:
            what = dead_worker(exc, loader_workers=int(self.workers) > 0)
            if what is None:
                raise
            kept = self.interrupted_message().replace("interrupted", "stopped", 1)
            raise WorkerDiedError(
                f"{what}. A data loader worker died (the system kills one that runs out of "
                f"memory): {kept}, with fewer workers (CLI: --workers) or a smaller batch_size "
                "(CLI: --batch-size) if memory ran out."
            ) from exc
        return self

    def _tick(self) -> None:
        """``fit_seconds_`` and ``fit_process_seconds_`` of this run so far: the earlier
        pieces' and this one's, which runs on ``world_size_`` processes (from its start,
        set-up included, to the end of its last epoch; a piece that trains no epoch, a
        finished run run again, adds nothing)."""
        started, wall, process = self._clock
        seconds = time.perf_counter() - started
        self.fit_seconds_ = wall + seconds
        self.fit_process_seconds_ = process + self.world_size_ * seconds

    def interrupted_message(self, command: str = "the same command") -> str:
        """What an interrupted ``fit`` kept, and how to go on."""
        done = self.saved_epoch_
        if done is None or self.run_dir is None:
            where = "no run_dir: nothing kept" if self.run_dir is None else "no epoch saved yet"
            return f"interrupted before any checkpoint ({where}); run {command} to start over"
        return f"interrupted: epoch {done} of {self.epochs} done; run {command} to resume"

    def _train_loader(self, source: ImageSource, rows: np.ndarray) -> DataLoader:
        pre = self.backbone_.preprocessing
        augment = train_transform(pre, self.augment)
        self.generator_ = torch.Generator().manual_seed(self.seed)  # shuffling and worker seeds
        dataset = SourceDataset(
            source, rows, augment, image_loader(pre, self.decode, self.augment), seed=self.seed
        )
        return loader(
            dataset,
            self._rank_batch,
            int(self.workers),
            shuffle=True,
            generator=self.generator_,
            pin_memory=self.device_.type == "cuda",
            sampler=ddp.train_sampler(dataset, self.seed),  # under DDP, this rank's share
        )

    def _build(
        self, mode: Mode, steps: int, fitted_probe: tuple[dict[str, torch.Tensor], dict] | None
    ) -> None:
        """The model with its new head (from ``fitted_probe`` for a fresh LP-FT run), frozen
        as ``mode`` says, and its optimiser and per-step schedule."""
        self.probe_ = fitted_probe[1] if fitted_probe else None
        _seed_everything(self.seed)
        model, self.head_ = _attach_head(
            self.backbone_, len(self.classes_), self.dropout, standardize=mode.kind == "lpft"
        )
        if fitted_probe:
            probe.load_into(model.get_submodule(self.head_), fitted_probe[0])
        if self.sync_bn and ddp.active():
            model = ddp.convert_sync_bn(model, self.device_)
        # After the conversion: frozen_ must hold the batch norms that train, not replaced ones.
        self.frozen_ = freeze(model, mode, self.backbone_.stages, self.head_)
        if self.frozen_.note:
            warnings.warn(
                f"Fine-tuning {self.backbone_.spec} in mode {str(mode)!r}: {self.frozen_.note} "
                "(recorded as mode_note in the run's history); use 'bn' on backbones with "
                "batch norm.",
                stacklevel=2,
            )
        self.model_ = model.to(self.device_, memory_format=self._layout)
        self.max_grad_norm_ = max_grad_norm(self.max_grad_norm, mode.kind)
        # An LP-FT head is already fitted: it moves at the backbone's pace, not at the fast
        # rate a fresh head needs (at that rate it diverged on digits).
        backbone_lr = self.lr * (self.backbone_lr_scale if mode.pretrained else 1.0)
        head_lr = backbone_lr if mode.kind == "lpft" else self.lr
        groups = param_groups(model, self.head_, head_lr, backbone_lr, self.weight_decay)
        self.optimizer_ = build_optimizer(
            self.optimizer, groups, self.lr, self.momentum, self.weight_decay
        )
        # fp16 autocast (GPUs without bf16) needs its loss scaled; elsewhere a no-op
        self.scaler_ = torch.amp.GradScaler(
            "cuda", enabled=amp_dtype(self.device_) == torch.float16
        )
        self.scheduler_ = warmup_cosine(
            self.optimizer_, round(self.warmup_epochs * steps), int(self.epochs) * steps
        )
        self.trainable_params_ = sum(p.numel() for p in model.parameters() if p.requires_grad)

    def _check_batch_of_one(self, data: DataLoader) -> None:
        """A ConfigError for a training batch of one image through batch norm that trains:
        in training mode it normalises by the batch's own statistics, which one image on a
        1×1 feature map does not have (torch raised a ValueError mid-epoch), and elsewhere
        are one image's. A rank's batches are all full (the last short one dropped) unless
        its rows fit one batch; SyncBatchNorm (sync_bn) takes the batch of every rank."""
        smallest = min(self._rank_batch, len(data.sampler))  # the sampler: this rank's rows
        if smallest * (self.world_size_ if self.sync_bn and ddp.active() else 1) != 1:
            return
        training = training_batch_norm(self.model_, self.frozen_)
        if not training:
            return
        rows = len(self.train_rows_)
        ranks = f" over {self.world_size_} ranks" if self.world_size_ > 1 else ""
        raise ConfigError(
            f"Training batches of 1 image ({rows} train row{'s' * (rows != 1)}{ranks}, "
            f"batch_size {self.batch_size}) through batch norm that trains (e.g. "
            f"{training[0]}): in training mode it normalises each batch by its own statistics, "
            "which one image cannot give. Use at least 2 train rows and a batch_size of at "
            "least 2 per rank, or a mode that keeps batch norm frozen (bn, head, lpft)."
        )

    def _start_notes(self) -> dict:
        notes = {"val_split": "source"}
        if self.val_carved_:
            notes["val_split"] = (
                f"carved {self.val_fraction:g} of train (stratified, seed {self.seed})"
            )
        if self.probe_:
            notes["probe"] = self.probe_
        if self.frozen_.note:
            notes["mode_note"] = self.frozen_.note
        return notes

    def _check_params(self) -> Mode:
        mode = Mode.parse(self.mode)
        check_decode(self.decode)
        _check_integer("epochs", self.epochs, 0)
        _check_integer("batch_size", self.batch_size, 1)
        _check_integer("workers", self.workers, 0, "0: images load in the main process")
        _check_integer("seed", self.seed, 0)
        _check_integer("patience", self.patience, 0, "0 or None: no early stopping", none=True)
        _check_integer("image_size", self.image_size, 8, "the weights' own size", none=True)
        _check_number("lr", self.lr, "> 0", lambda v: v > 0)
        for name in ("backbone_lr_scale", "weight_decay", "warmup_epochs"):
            _check_number(name, getattr(self, name), ">= 0", lambda v: v >= 0)
        for name in ("momentum", "dropout", "label_smoothing", "val_fraction"):
            _check_number(name, getattr(self, name), "in [0, 1)", lambda v: 0 <= v < 1)
        if self.epochs and self.warmup_epochs > self.epochs:
            raise ConfigError(
                f"warmup_epochs {self.warmup_epochs:g} is longer than epochs {self.epochs}: the "
                "learning rate would never reach its set value (lr). Use warmup_epochs of at "
                f"most {self.epochs}, or more epochs."
            )
        cap = self.max_grad_norm
        if not (cap is None or (isinstance(cap, str) and cap == "auto")):
            valid = ">= 0 (0 or None: no cap), or 'auto'"
            _check_number("max_grad_norm", cap, valid, lambda v: v >= 0)
        C = self.probe_C  # checked now: LP-FT reads it only after computing the features
        if not (isinstance(C, str) and C == "auto") and not (_is_number(C) and C > 0):
            raise ConfigError(
                f"probe_C must be 'auto' (chosen on val) or a positive number, e.g. 1.0; "
                f"got {C!r}{_kind(C)}."
            )
        if self.loss not in LOSSES:
            raise ConfigError(f"Unknown loss {self.loss!r}. Valid losses: {', '.join(LOSSES)}.")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"Unknown optimizer {self.optimizer!r}. Valid optimizers: {', '.join(OPTIMIZERS)}."
            )
        if self.augment not in AUGMENTATIONS:
            raise ConfigError(
                f"Unknown augment {self.augment!r}. Valid: {', '.join(AUGMENTATIONS)}."
            )
        return mode

    def _callbacks(self) -> list[Callback]:
        out: list[Callback] = []
        if self.patience:  # 0 as None: TOML, --patience and --grid have no None
            out.append(EarlyStopping(self.patience))
        if self.run_dir is not None and ddp.is_main():  # one writer
            out += [Checkpoint(self.run_dir), HistoryLogger(Path(self.run_dir) / "history.jsonl")]
        if self._speaks(1):
            out.append(ProgressPrinter())
        return out + list(self.callbacks or [])

    def _speaks(self, verbose: int) -> bool:
        """Whether this process prints at ``verbose`` level: only rank 0 of a DDP job."""
        return self.verbose >= verbose and ddp.is_main()

    @property
    def _layout(self) -> torch.memory_format:
        # Channels-last on CUDA, where it speeds up training under autocast; on the CPU the
        # layout fine-tuning has always used, so that its results stay as they were.
        return torch.channels_last if self.device_.type == "cuda" else torch.preserve_format

    def _inference(self) -> Inference:
        """The shared forward pass over the fine-tuned model, in the layout it trains in."""
        return Inference(self.model_, self.device_, memory_format=self._layout)

    def _fit_probe(
        self, train_rows: np.ndarray, store: FeatureStore | None
    ) -> tuple[dict[str, torch.Tensor], dict]:
        key = repr(
            sorted((k, v) for k, v in self.get_params().items() if k not in NOT_PROBE_PARAMS)
        )
        if key not in self._probes:
            self._probes[key] = self._fit_new_probe(train_rows, store)
        tensors, summary = self._probes[key]
        return tensors, dict(summary)

    def _fit_new_probe(
        self, train_rows: np.ndarray, store: FeatureStore | None
    ) -> tuple[dict[str, torch.Tensor], dict]:
        rows = (train_rows, self.val_rows_)
        if store is not None:
            compute = probe.own_compute(
                self.device_, self.decode, input_dtype(self.backbone_.model)[1]
            )
            feats = probe.stored_features(
                store, self.backbone_, self.source_, *rows, compute=compute
            )
        else:
            feats = [self._pooled_features(r) for r in rows]
        tensors, summary = probe.fit_probe(*feats, len(self.classes_), self.probe_C, self.device)
        if store is not None:
            summary["features"] = str(store.path)
        return tensors, summary

    def _pooled_features(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pooled features and labels of ``rows``; under DDP each rank computes its share."""
        X, _ = probe.pooled_features(
            self.backbone_,
            self._eval_loader(self.source_, ddp.my_rows(rows)),
            self.device_,
            self._speaks(2),
            memory_format=self._layout,
        )
        return ddp.gather_rows(X, len(rows)), np.asarray(self.source_.labels, np.int64)[rows]

    def _eval_load(self):
        return image_loader(self.backbone_.preprocessing, self.decode)

    # ---------------------------------------------------------------- loop

    def _train_epoch(self, replica: nn.Module, data: DataLoader, epoch: int) -> dict:
        data.dataset.set_epoch(epoch)
        if ddp.active():
            data.sampler.set_epoch(epoch)
            ddp.seed_epoch(self.seed, epoch, self.generator_)
        set_train_mode(self.model_, self.frozen_)
        dtype = amp_dtype(self.device_)
        fed = input_dtype(self.model_)[1]  # a float64 or bfloat16 model trains in its dtype
        start, seen = time.perf_counter(), 0
        # Sums stay on the device: reading them every step (.item(), int(), an `if` on a
        # tensor) would make the host wait for each step before queuing the next.
        total = torch.zeros((), device=self.device_)
        correct = torch.zeros((), dtype=torch.int64, device=self.device_)
        # DDP keeps the ranks in step: rank 0's progress speaks for all.
        with progress_bar(
            len(data), desc=f"epoch {epoch}", unit="batch", enabled=self._speaks(2)
        ) as bar:
            for images, labels in data:
                images = images.to(self.device_, fed, non_blocking=True, memory_format=self._layout)
                labels = labels.to(self.device_, non_blocking=True)
                with torch.autocast(self.device_.type, dtype=dtype, enabled=dtype is not None):
                    logits = replica(images)
                    loss = self._loss(logits.float(), labels)
                self.optimizer_.zero_grad(set_to_none=True)
                self.scaler_.scale(loss).backward()  # fp16: scaled, so small gradients survive
                if self.max_grad_norm_ is not None:
                    self.scaler_.unscale_(self.optimizer_)  # the cap is on the true gradient
                    nn.utils.clip_grad_norm_(self.model_.parameters(), self.max_grad_norm_)
                self.scaler_.step(self.optimizer_)
                self.scaler_.update()
                self.scheduler_.step()
                total += loss.detach() * len(labels)
                correct += (logits.argmax(1) == labels).sum()
                seen += len(labels)
                bar.update(1)
        ddp.share_buffers(self.model_)
        sums = torch.stack([total.double(), correct.double(), total.new_tensor(seen).double()])
        total, correct, seen = ddp.all_sum(sums).tolist()  # over every rank; one read
        seen = int(seen)
        train_loss = total / max(seen, 1)
        if not math.isfinite(train_loss):
            raise TrainingDivergedError(
                f"Training loss became {train_loss} in epoch {epoch}; lower lr (now "
                f"{self.lr}) or use more warm-up epochs."
            )
        seconds = time.perf_counter() - start
        return {
            "train_loss": train_loss,
            "train_accuracy": correct / max(seen, 1),
            "lr": self.optimizer_.param_groups[0]["lr"],
            "seconds": seconds,
            "images_per_s": seen / seconds,
        }

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.loss == "cross_entropy":
            return F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        n = logits.shape[1]
        target = F.one_hot(labels, n).float() * (1 - self.label_smoothing)
        target += self.label_smoothing / n
        # Summed over classes (the squared distance between two distributions), mean over images.
        return (torch.softmax(logits, dim=1) - target).pow(2).sum(dim=1).mean()

    def _validate(self) -> dict:
        # Under DDP: every rank scores its share, rank 0 computes the metrics once (on all
        # rows, in order), and every rank records rank 0's numbers.
        proba = self._proba(self.source_, self.val_rows_, everywhere=False)
        logs = None
        if proba is not None:
            labels = np.asarray(self.source_.labels)[self.val_rows_]
            m = compute_metrics(labels, proba, self.class_names_, n_boot=0)
            logs = {"val_loss": m["log_loss"], "val_accuracy": m["top1"]}
        return ddp.from_main(logs)

    def _end_epoch(self, logs: dict, callbacks: list[Callback]) -> None:
        # Held signals: an epoch is recorded and checkpointed whole (best.pt, last.pt and
        # history.jsonl agree), or not at all.
        with deferred():
            score = (logs["val_accuracy"], -logs["val_loss"])
            if not self.history_ or score > self.best_score_:
                self.best_epoch_, self.best_score_ = logs["epoch"], score
                self._best_weights = copy.deepcopy(self.model_.state_dict())
            self.history_.append(logs)
            self._tick()
            written = None  # the checkpoint callback, and whether last.pt says "stopped"
            for cb in callbacks:
                cb.on_epoch_end(self, logs)
                if isinstance(cb, Checkpoint):
                    written = (cb, self.stop_training_)
            if written and self.stop_training_ and not written[1]:
                # A later callback (the caller's) stopped training: last.pt must say so, or
                # running the finished run again would train on.
                written[0].on_epoch_end(self, logs)
            if ddp.active():
                # Rank 0's decision and checkpoint count; waiting for them here also means no
                # rank goes on before this epoch's checkpoint is written.
                self.stop_training_, self.saved_epoch_ = ddp.from_main(
                    (self.stop_training_, self.saved_epoch_)
                )

    # ---------------------------------------------------------------- checkpoints

    def _config(self, source: ImageSource) -> dict:
        backbone = self.backbone_
        frozen = frozen_by(
            backbone.model, Mode.parse(self.mode), backbone.stages, backbone.classifier or ""
        )
        return {
            **result_params(self.get_params()),
            IDENTITY: backbone.identity(),
            "source": self._fingerprint or source.fingerprint(),
            "classes": list(source.classes),
            PRECISION: probe.own_compute(self.device_, self.decode, input_dtype(backbone.model)[1])[
                "precision"
            ],
            # partial:N only: its identity leaves the stage list out
            **({FROZEN: list(frozen)} if frozen is not None else {}),
        }

    def _resumable(self, source: ImageSource) -> dict | None:
        """The saved state to continue from, or None to start afresh."""
        self.config_ = self._config(source)
        if self.run_dir is None or not self.resume:
            return None
        path = Path(self.run_dir) / checkpoint.LAST
        exists = path.exists()
        if ddp.from_main(exists) != exists:  # else ranks would train from different epochs
            raise ConfigError(
                f"Rank {ddp.rank()} {'finds' if exists else 'does not find'} {path}, which "
                f"rank 0 {'does not' if exists else 'resumes from'}: give every rank the same "
                "run_dir, in a folder they all see (a shared filesystem)."
            )
        if not exists:
            return None
        saved = checkpoint.load_to_resume(path, RESUMED_KEYS, self._start_over)
        expected = self.config_
        # Written before the identity (or a partial fine-tune's frozen modules, or the precision)
        # was recorded: its spec, image size and other settings are still checked; the
        # weights behind the spec, the modules it froze and the precision it trained at
        # cannot be, as before. Its last.pt records them from the resumed epochs on.
        expected = {k: v for k, v in expected.items() if k in saved["config"] or k not in LATER}
        if self._fingerprint and saved["config"].get("source") == source.fingerprint():
            expected = {**expected, "source": saved["config"]["source"]}  # sizes and mtimes
        checkpoint.check_config(saved["config"], expected, path, LATER_DEFAULTS, self._start_over)
        if ddp.is_main():  # one writer; the other ranks read best.pt once it is settled
            checkpoint.settle_best(Path(self.run_dir), saved["best_epoch"], saved.get("run"))
        ddp.from_main(None)
        best = Path(self.run_dir) / checkpoint.BEST
        saved["best"] = checkpoint.load_to_resume(best, ("model",), self._start_over)
        checkpoint.check_best(saved["best"], saved, best, self._start_over)
        return saved

    def training_state(self) -> dict:
        """Everything ``last.pt`` holds: weights, optimiser, schedule, RNG states, history."""
        return {
            "config": self.config_,
            "run": self._run,
            "epoch": self.history_[-1]["epoch"],
            "model": self.model_.state_dict(),
            "optimizer": self.optimizer_.state_dict(),
            "scheduler": self.scheduler_.state_dict(),
            "scaler": self.scaler_.state_dict(),  # {} unless fp16: its loss scale
            "rng": checkpoint.rng_state(self.generator_),
            "history": self.history_,
            "best_epoch": self.best_epoch_,
            "best_score": list(self.best_score_),
            "stopped": self.stop_training_,
            "probe": self.probe_,
            "fit_seconds": self.fit_seconds_,
            "fit_process_seconds": self.fit_process_seconds_,
        }

    def best_state(self) -> dict:
        return {"epoch": self.best_epoch_, "run": self._run, "model": self._best_weights}

    def _restore(self, saved: dict) -> None:
        self.model_.load_state_dict(saved["model"])
        last = Path(self.run_dir) / checkpoint.LAST
        checkpoint.check_optimizer(saved["optimizer"], self.optimizer_, last, self._start_over)
        self.optimizer_.load_state_dict(saved["optimizer"])
        self.scheduler_.load_state_dict(saved["scheduler"])
        if saved.get("scaler") and self.scaler_.is_enabled():  # fp16 runs continue its scale
            self.scaler_.load_state_dict(saved["scaler"])
        self.history_ = list(saved["history"])
        self.best_epoch_, self.best_score_ = saved["best_epoch"], tuple(saved["best_score"])
        self._best_weights = saved["best"]["model"]
        self.stop_training_ = saved["stopped"]
        self.probe_ = saved["probe"]
        self.start_epoch_ = self.saved_epoch_ = saved["epoch"]
        self.fit_seconds_, self.fit_process_seconds_ = _resumed_seconds(saved)
        checkpoint.set_rng_state(saved["rng"], self.generator_)

    # ---------------------------------------------------------------- predict

    def _eval_loader(self, source: ImageSource, rows: np.ndarray) -> DataLoader:
        """Batches of ``rows`` with the backbone's own preprocessing, for a forward pass."""
        transform = self.backbone_.preprocessing.transform()
        dataset = SourceDataset(source, rows, transform, self._eval_load())
        batch = max(1, 2 * int(self.batch_size) // ddp.world_size())
        return loader(dataset, batch, int(self.workers))

    def _proba(
        self, source: ImageSource, rows: np.ndarray, everywhere: bool = True
    ) -> np.ndarray | None:
        """Probabilities of ``rows``; in a process group each rank scores its share and
        the rows are gathered in order (on rank 0 only, unless ``everywhere``)."""
        run = self._inference()
        logits = [run.array(images) for images, _ in self._eval_loader(source, ddp.my_rows(rows))]
        if logits:
            proba = torch.softmax(torch.from_numpy(np.concatenate(logits)), dim=1).numpy()
        else:
            proba = np.zeros((0, len(self.classes_)), np.float32)
        return ddp.gather_rows(proba, len(rows), everywhere)

    def _rows(self, X: ImageSource | str) -> tuple[ImageSource, np.ndarray]:
        check_is_fitted(self)
        if isinstance(X, str):
            # A val carved from train is not the source's own split: the rows trained and
            # chosen on are.
            fitted = {"train": self.train_rows_, "val": self.val_rows_}
            return self.source_, fitted[X] if X in fitted else self.source_.indices(X)
        if isinstance(X, ImageSource):
            if list(X.classes) != self.class_names_:
                raise HeadMismatchError(
                    f"This FineTuner was fitted on classes {self.class_names_}; the source has "
                    f"{list(X.classes)}. Predict on a source with the same class list."
                )
            return X, np.arange(len(X))
        raise ConfigError(
            f"FineTuner predicts an ImageSource or a split name of the fitted source "
            f"('train', 'val', 'test'); got {type(X).__name__}."
        )

    def predict_proba(self, X: ImageSource | str) -> np.ndarray:
        """(n, C) class probabilities for a source (all rows) or a split of the fitted one:
        ``"train"`` and ``"val"`` are the rows ``fit`` trained and chose its epoch on
        (``train_rows_``, ``val_rows_``), a val carved from train included."""
        check_is_fitted(self)
        with on_device(self.device_):
            return self._proba(*self._rows(X))

    def predict(self, X: ImageSource | str) -> np.ndarray:
        return self.predict_proba(X).argmax(axis=1)

    def score(self, X: ImageSource | str, y=None, sample_weight=None) -> float:
        """Accuracy; ``y`` defaults to the source's own labels."""
        source, rows = self._rows(X)
        y = np.asarray(source.labels)[rows] if y is None else np.asarray(y)
        return float(np.average(self.predict(X) == y, weights=sample_weight))

    def evaluate(self, X: ImageSource | str, n_boot: int = DEFAULT_BOOT) -> dict:
        """``compute_metrics`` (the heads' metric code) on a source or a split of the fitted one."""
        source, rows = self._rows(X)
        proba = self.predict_proba(X)
        return compute_metrics(
            np.asarray(source.labels)[rows], proba, self.class_names_, n_boot=n_boot, seed=self.seed
        )

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "model_") and hasattr(self, "best_epoch_")


def missing_folders(run_dir: Path) -> list[Path]:
    """The run folder and the folders above it that do not exist yet, deepest first."""
    return list(itertools.takewhile(lambda p: not p.exists(), (run_dir, *run_dir.parents)))


def _missing(run_dir: Path) -> list[Path]:
    """What taking ``run_dir``'s lock makes: its lock file and the folders not there yet,
    deepest first."""
    lock = lock_path(run_dir / checkpoint.LAST)
    return ([] if lock.exists() else [lock]) + missing_folders(run_dir)


def _remove_if_unused(made: list[Path]) -> None:
    """Remove what ``_missing`` listed when the fit left nothing else in it: a refusal
    before the first checkpoint (too few rows, another configuration) left the lock file in
    a folder that was empty, or made for nothing. What an earlier run made stays."""
    for path in made:
        with contextlib.suppress(OSError):
            if path.is_dir():
                path.rmdir()  # only an empty folder goes
            elif [p.name for p in path.parent.iterdir()] == [path.name]:
                path.unlink()  # the lock file, alone in its folder


def check_run_dir_outside(source: ImageSource, run_dir: str | Path | None) -> None:
    """A ConfigError for a run folder inside the image folder the fine-tune reads: the next
    scan of that folder (a resume, an extraction) takes the run folder for a class folder
    without images (refused) or, inside a class folder, its report's plots/*.png for images
    of that class (silently). (A pipeline refuses such an out folder at its checks.)"""
    root = None if run_dir is None else folder_enclosing(source, run_dir)
    if root is not None:
        raise ConfigError(
            f"The run folder {run_dir} is inside the image folder {root} that the "
            "fine-tune reads: a later scan of that folder (the resume, an extraction) would "
            "take the run folder for a class folder, or its report's plots/*.png for images. "
            "Use a run_dir outside the image folder (CLI: --run-dir)."
        )


def _resumed_seconds(saved: dict) -> tuple[float, float]:
    """The wall seconds and process-seconds of the pieces a checkpoint holds."""
    history = saved["history"]
    # Checkpoints from before fit_seconds was saved: at least their epochs' time.
    wall = saved.get("fit_seconds", sum(h.get("seconds") or 0.0 for h in history))
    # From before fit_process_seconds: the wall seconds at the world size of the checkpoint's
    # last epoch (1 in histories from before DDP), as reports counted a row of that run.
    world = history[-1].get("world_size") or 1
    return wall, saved.get("fit_process_seconds", wall * world)


def _check_two_classes(source: ImageSource, rows: np.ndarray) -> None:
    """A ConfigError for train rows of one class (e.g. on_error="skip" left out every image of
    the others): training learns to predict that class for every image, and LP-FT's probe
    was refused in logistic regression's words."""
    present = np.unique(np.asarray(source.labels)[rows])
    if len(present) < 2:
        raise ConfigError(
            f"The train rows hold {len(rows)} image{'s' * (len(rows) != 1)}, all of class "
            f"{source.classes[int(present[0])]!r}: a fine-tune needs train images of at least "
            "2 classes to learn from. Check the source's labels and splits (and, under "
            'on_error = "skip", which images were left out).'
        )


def warn_if_val_cannot_choose(tuner: FineTuner, chosen: str, stacklevel: int = 3) -> None:
    """Warn, on rank 0, when ``tuner``'s val rows chose ``chosen`` (an epoch, a grid
    candidate) at a val accuracy no better than predicting the most common val class for
    every row, the heads' rule (a 1-row val split kept epoch 0, the untrained model, at
    100 %)."""
    score = float(tuner.best_score_[0])
    said = _no_better_than_one_class(tuner, score)
    if said is None:
        return
    rows, carved = said
    warnings.warn(
        f"The fine-tune chose {chosen} at {100 * score:.1f} % val accuracy {rows}: on these "
        "rows it cannot be told from a model that ignores the images (epoch 0 is the "
        f"untrained model). Give the val split more rows of more classes{carved}; if it has "
        "enough, the fine-tune learned nothing they can see.",
        UserWarning,
        stacklevel=stacklevel,  # the line that called fit (or fit_grid)
    )


def warn_if_probe_cannot_choose(tuner: FineTuner, stacklevel: int = 3) -> None:
    """Warn, on rank 0, when LP-FT's probe chose its C (``probe_C="auto"``) on the val rows at a
    val accuracy no better than predicting the most common val class for every row: the
    heads' rule (ties: the lowest val log loss, then the smallest C), and the fine-tune starts
    from that probe."""
    if Mode.parse(tuner.mode).kind != "lpft" or tuner.probe_C != "auto" or not tuner.probe_:
        return
    score = tuner.probe_["val_accuracy"]
    said = _no_better_than_one_class(tuner, score)
    if said is None:
        return
    rows, carved = said
    warnings.warn(
        f"LP-FT's probe chose C={tuner.probe_['C']:g} at {100 * score:.1f} % val accuracy "
        f"{rows}: these rows cannot tell its C values apart from a head that ignores the "
        "features, and ties go to the lowest val log loss, then the smallest C (the "
        "fine-tune starts from that probe). "
        f"Give the val split more rows of more classes{carved}, or set probe_C (CLI --probe-C).",
        UserWarning,
        stacklevel=stacklevel,  # the line that called fit
    )


def _no_better_than_one_class(tuner: FineTuner, score: float) -> tuple[str, str] | None:
    """On rank 0, where ``score`` on ``tuner``'s val rows is no better than predicting their
    most common class for every row (heads.selection's rule): what the warning says of the
    rows, and how to get more when val was carved from train. Else (or on other ranks) None."""
    if not ddp.is_main():
        return None
    labels = np.asarray(tuner.source_.labels)[tuner.val_rows_]
    found = no_better_than_one_class(score, [labels])
    if found is None:
        return None
    share, common = found
    n, name = len(labels), tuner.class_names_[int(common)]
    rows = (
        f"on {n} val row{'s' * (n != 1)}, no better than predicting class {name!r} for every "
        f"row ({100 * share:.1f} %)"
    )
    return rows, " (carved from train: raise val_fraction, CLI --val-fraction)" * tuner.val_carved_


def _check_steps(steps: int, rows: int, world: int) -> None:
    """A ConfigError for an epoch of no training step, which would report the untrained
    network as trained: under DDP, ``DistributedSampler(drop_last=True)`` gives each rank
    ``rows // world`` rows (a single process always takes a step)."""
    if steps:
        return
    raise ConfigError(
        f"{rows} train rows shared by {world} ranks give each rank none (every rank takes the "
        f"same number of rows; the rest are dropped), so no training step would run. Use at "
        f"least {world} train rows, or fewer ranks."
    )


def _check_integer(name: str, value, low: int, note: str = "", none: bool = False) -> None:
    """A ConfigError naming ``name`` unless ``value`` is an integer (numpy's too) >= ``low``
    (or None, with ``none``, which ``note`` explains)."""
    if none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
        valid = f"an integer >= {low}" + (" or None" if none else "")
        note = f" ({note})" if note else ""
        raise ConfigError(f"{name} must be {valid}{note}; got {value!r}{_kind(value)}.")


def _check_number(name: str, value, valid: str, ok) -> None:
    """A ConfigError naming ``name`` unless ``value`` is a finite number for which ``ok``."""
    if not _is_number(value) or not ok(value):
        raise ConfigError(f"{name} must be a number {valid}; got {value!r}{_kind(value)}.")


def _is_number(value) -> bool:
    """A finite real number (numpy's too), not a bool."""
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def _kind(value) -> str:
    """ " (a str)" for a value that is no number, where its repr may not say so."""
    if value is None or (isinstance(value, Real) and not isinstance(value, bool)):
        return ""
    return f" (a {type(value).__name__})"


def spec_for(backbone: str, mode: Mode) -> str:
    """The spec a mode builds: ``scratch`` swaps the weights for ``none`` (random init)."""
    if mode.pretrained:
        return backbone
    return str(replace(BackboneSpec.parse(backbone), weights="none"))


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _attach_head(
    backbone: Backbone, n_classes: int, dropout: float, standardize: bool = False
) -> tuple[nn.Module, str]:
    """Replace the backbone's classifier by a fresh ([standardise +] [dropout +]) linear layer
    for ``n_classes``."""
    name = backbone.classifier
    if not name:  # a feature encoder without a head at its top (timm's Gemma 4 ViT encoder)
        raise ConfigError(
            f"Backbone {backbone.spec!r} has no linear classifier to replace: it is an encoder "
            "without a classifier at its top, whose output is its features. Fine-tune a "
            "variant of it with a classifier, or extract its 'logits' (its output) and fit a "
            "head on them."
        )
    old = backbone.model.get_submodule(name)
    if not isinstance(old, nn.Linear):
        raise ConfigError(
            f"Backbone {backbone.spec!r} has no linear classifier to replace (found "
            f"{type(old).__name__}); fine-tuning needs one whose input is the pooled features."
        )
    linear = nn.Linear(old.in_features, n_classes)
    layers = [probe.Standardize(old.in_features)] if standardize else []
    layers += [nn.Dropout(dropout)] if dropout > 0 else []
    head = nn.Sequential(*layers, linear) if layers else linear
    # In the model's dtype: a float32 head behind a float64 or bfloat16 model fails. Not the
    # old classifier's: an IdentityHead (a CLIP or DINOv2 tower) has no weight.
    backbone.model.set_submodule(name, head.to(input_dtype(backbone.model)[1]))
    return backbone.model, name


def check_one_classifier(backbone: Backbone) -> None:
    """A ConfigError for a model with several classifiers whose outputs it combines, as timm
    names them: beside the main one, distilled DeiT, PiT, LeViT and EfficientFormer have
    ``head_dist``, VOLO ``aux_head``, CrossViT one per branch. Replacing one left the others
    giving 1000 classes (a size mismatch at the first batch)."""
    names = (getattr(backbone.model, "pretrained_cfg", None) or {}).get("classifier")
    names = [names] if isinstance(names, str) else list(names or ())
    modules = dict(backbone.model.named_modules())
    heads = [n for n in names if isinstance(modules.get(n), nn.Linear)]
    if len(names) > 1 and not heads:
        # Built without classifiers (num_classes=0): each is an Identity, and replacing one
        # would leave the others giving the pre-logits beside the new logits.
        raise ConfigError(
            f"Backbone {backbone.spec!r} has no linear classifier to replace: it was built "
            f"without classifiers (num_classes=0) and combines {len(names)} "
            f"({', '.join(names)}), and fine-tuning replaces one classifier only. Build it "
            "with its classifiers (leave num_classes out), use a model with one classifier "
            "(e.g. a non-distilled variant), or extract its features and fit a head on them."
        )
    if len(heads) > 1:
        raise ConfigError(
            f"Backbone {backbone.spec!r} has {len(heads)} classifiers ({', '.join(heads)}) whose "
            "outputs it combines (distilled or auxiliary heads); fine-tuning replaces one "
            "classifier only. Use a model with one classifier (e.g. a non-distilled variant), "
            "or extract its features and fit a head on them."
        )


__all__ = ["FineTuner", "check_one_classifier"]
