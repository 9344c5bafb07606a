"""The fine-tuning stage: every mode on every fine-tuning backbone, per seed."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from featpipe.backbones.base import input_dtype
from featpipe.data import ImageSource
from featpipe.data.splits import with_train_ids
from featpipe.data.unreadable import unreadable_images, without
from featpipe.distributed import current_ranks
from featpipe.evaluate import Cost, Extraction, Timer, Usage, measure
from featpipe.finetune import probe
from featpipe.finetune.freezing import Mode, frozen_by, has_batch_norm
from featpipe.finetune.tuner import FROZEN, result_params, spec_for
from featpipe.pipeline.jobs import (
    HASHED_N_BOOT,
    Job,
    PlanData,
    RowContext,
    RunContext,
    at_sizes,
    backbone_identity,
    backbone_suffix,
    config_hash,
    decode_setting,
    hashes_at_n_boot,
    skip_summary,
    sweep_ids,
)
from featpipe.pipeline.stages.extract import feature_store, planned_store
from featpipe.provenance import plain
from featpipe.report.results import MethodKind, Predictions, ResultRow, ids_sha256
from featpipe.report.runplan import identity_hash
from featpipe.store.schema import skipped_rows

if TYPE_CHECKING:
    import torch

    from featpipe.backbones import Backbone
    from featpipe.finetune.search import GridResult
    from featpipe.pipeline.config import PipelineConfig
    from featpipe.store import FeatureStore

NAME = "finetune"
# The key of a fine-tune's identity that names the images the run leaves out (see left_out).
LEFT_OUT = "images_left_out"
SOURCE = "finetune source"  # the run's fine-tuning source, made once (see _source)


def plan(config: PipelineConfig, data: PlanData) -> list[Job]:
    """One job per (backbone, mode, seed); the config hash covers the data and every
    fine-tuning setting that changes a result."""
    suffix = backbone_suffix(config)
    jobs = []
    for bb in config.finetune.backbones:
        for mode in config.finetune.modes:
            settings = {
                "data": data.fingerprint,
                **HASHED_N_BOOT,
                **result_params({**config.finetune.params(), "mode": mode}),  # as the mode trains
                "backbone": bb,
                **decode_setting(config),
            }
            if config.finetune.grid:  # left out when empty: hashes stay as they were
                settings["grid"] = config.finetune.grid
            if _reads_store(config, bb, mode):  # the probe then sees stored features
                settings["probe_features"] = {"dtype": config.features.dtype}
            label = f"fine-tuning ({_mode_label(mode, data.backbones.get(bb))}){suffix(bb)}"
            built = (spec_for(bb, Mode.parse(mode)), config.finetune.image_size)
            frozen = frozen_modules(data.backbones.get(bb), mode)
            jobs += [
                Job(NAME, f"{bb}/finetune:{mode}", MethodKind.FINETUNE, label, bb, seed,
                    config_hash(settings), mode=mode, backbone_at=built, frozen=frozen,
                    store_of=bb,  # its row is reused only where computed alike (see planned)
                    hash_at_n_boot=hashes_at_n_boot(settings))
                for seed in config.seeds
            ]  # fmt: skip
    return at_sizes(config, jobs)


def _mode_label(mode: str, backbone: Backbone | None) -> str:
    """``mode`` as its label shows it: ``bn`` on a backbone without batch norm trains like
    ``full`` (its history's mode_note), and says so, not to read as a third recipe."""
    if Mode.parse(mode).kind == "bn" and backbone and not has_batch_norm(backbone.model):
        return "bn without batch norm: as full"
    return mode


def frozen_modules(backbone: Backbone | None, mode: str) -> tuple[str, ...] | None:
    """The modules (and loose parameters) ``partial:N`` freezes in ``backbone``: its first N
    stages, as ``freeze`` finds them. Its identity leaves the stage list out, so a row records
    them: a fine-tune of another stage list is another result. None for other modes (their
    freezing reads no stage list) and for a backbone not built."""
    if backbone is None:
        return None
    return frozen_by(backbone.model, Mode.parse(mode), backbone.stages, backbone.classifier or "")


def run(job: Job, context: RunContext) -> ResultRow:
    """Fine-tune the job's backbone in its mode on the run's source (each setting of the
    grid, when there is one, the best on val kept), then test it."""
    from featpipe.finetune import FineTuner
    from featpipe.finetune.search import fit_grid

    read = _probe_store(job, context)  # opened first: _source then reads its skips
    source, skipped = context.once(SOURCE, lambda: _source(context))
    train_ids = sweep_ids(context, job.train_size)
    if train_ids is not None:
        source = with_train_ids(source, train_ids)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in job.backbone)
    made_by = backbone_identity(context, job)
    if job.frozen is not None:  # a checkpoint of other frozen modules cannot be resumed
        made_by = {**made_by, "frozen": list(job.frozen)}
    precision = own_compute(context, job.backbone)["precision"]
    if precision != "fp32":  # nor one trained at another precision (fp32: folders as before)
        made_by = {**made_by, "precision": precision}
    settings = context.config.finetune.params()
    grid = context.config.finetune.grid
    tuner = FineTuner(
        job.backbone,
        mode=job.mode,
        seed=job.seed,
        device=context.config.device,
        # Keyed by the config hash and the backbone's identity (which the hash leaves out):
        # an interrupted fine-tune resumes from its last.pt, a changed one (settings, or a
        # rewritten weights file, a fixed preprocessing, other frozen stages) starts afresh
        # beside it.
        run_dir=context.run_dir / "finetune" / f"{safe}-{job.mode.replace(':', '')}-{job.seed}-"
        f"{job.config_hash}-{identity_hash(made_by)[:8]}",
        verbose=2 if context.progress else 0,
        decode=context.config.features.decode,
        **settings,
    )
    # A store that left images out is not read: the fine-tune's rows are fewer. Nor one that
    # computed its features otherwise (on CUDA the store's pixels come from nvJPEG, the
    # fine-tune's from Pillow): the probe computes them as the fine-tune does.
    read = None if skipped or (read and not _computed_alike(read[0], context, job)) else read
    probe_features = read[0] if read else None
    # Over file contents, its checkpoint records the run's fingerprint (its folder is keyed by
    # it), not one of sizes and mtimes: touched files resume. Not computed again per fit.
    contents = context.config.source.hash_contents
    fingerprint = context.provenance["source"]["fingerprint"] if contents else None
    # keyed_run_dir: a checkpoint it cannot resume names the folder to delete (a pipeline
    # cannot set resume=False).
    fit = {"probe_features": probe_features, "fingerprint": fingerprint, "keyed_run_dir": True}
    with measure(context.device) as usage:
        if grid:
            search = fit_grid(tuner, source, grid, **fit)
            tuner = search.best
        else:
            search = None
            tuner.fit(source, **fit)
        with Timer() as predict:
            proba = tuner.predict_proba("test")  # the winner's only: test is read once
    return finetune_row(
        job,
        context,
        tuner,
        proba,
        usage,
        predict.seconds,
        settings,
        skipped,
        search=search,
        read=read,
        identity=with_left_out(context, tuner.backbone_.identity()),
        frozen=job.frozen,
    )


def finetune_row(
    job: Job,
    context: RowContext,
    tuner,
    proba: np.ndarray,
    usage: Usage,
    predict_seconds: float,
    settings: dict,
    skipped: dict[str, str],
    *,
    search: GridResult | None = None,
    read: tuple[FeatureStore, Extraction] | None = None,
    identity: dict | None = None,
    frozen: tuple[str, ...] | None = None,
) -> ResultRow:
    """The row of a fitted FineTuner whose test-split probabilities are ``proba``; also
    written by ``featpipe finetune``. ``settings`` are the row's params; with a grid
    ``search``, the winner's settings replace them, its ``curve`` lists every candidate's
    validation accuracy and the fitting time counts every candidate. ``read``: the feature
    store LP-FT's probe read and its extraction, part of the method's cost as for a probe.
    ``identity``: what its row records as its backbone (default: the fitted backbone's);
    ``frozen``: what a partial:N fine-tune froze (see ``frozen_modules``), recorded if given."""
    source = tuner.source_
    extra: dict = {}
    fit_seconds = tuner.fit_seconds_  # every resumed piece, not only this one
    process_seconds = tuner.fit_process_seconds_
    if search is not None:
        settings = {**settings, **search.params, "selection": "val"}
        extra["curve"] = [
            {"params": {k: plain(v) for k, v in p.items()}, "score": s} for p, s in search.curve
        ]
        fit_seconds, process_seconds = search.fit_seconds, search.fit_process_seconds
    rows = source.indices("test")
    y = np.asarray(source.labels)[rows]
    return context.row(
        job,
        classes=list(source.classes),
        metrics=context.metrics(y, proba, source.classes, job.seed),
        val_accuracy=float(tuner.best_score_[0]),
        world_size=int(tuner.world_size_),
        params={**settings, "best_epoch": int(tuner.best_epoch_)},
        history=[{k: plain(v) for k, v in h.items()} for h in tuner.history_],
        cost=Cost.of(
            usage,
            fit_seconds=fit_seconds,
            fit_process_seconds=process_seconds,
            predict_seconds=predict_seconds,
            n_test=len(y),
            trainable_params=int(tuner.trainable_params_),
            extraction=read[1] if read else None,
            tested_on_store=False,
        ),
        test=Predictions.of([source.ids[i] for i in rows], y, proba.argmax(axis=1)),
        provenance={
            "backbone": identity or tuner.backbone_.identity(),
            "store": {"path": str(read[0].path), "key": read[0].key} if read else None,
            # its training's (and probe's) precision and decode, which the config hash leaves
            # out: a re-run reuses the row only where it computes alike (see planned)
            "compute": probe.own_compute(
                tuner.device_, tuner.decode, input_dtype(tuner.backbone_.model)[1]
            ),
            "image_size": settings.get("image_size"),
            "skipped": skip_summary(skipped),
            **({"frozen": list(frozen)} if frozen is not None else {}),
        },
        **extra,
    )


def _reads_store(config: PipelineConfig, backbone: str, mode: str) -> bool:
    """Whether LP-FT's probe reads the ``pooled`` features of the run's feature store of
    ``backbone`` instead of running the backbone again: it does when the store has them at
    the fine-tuning's image size (which no grid varies) and over the same images (no
    train_sizes sweep, whose subsets are fewer rows than the store's). Decided from the
    config alone, so a resumed run makes the same choice as an uninterrupted one."""
    from featpipe.backbones import POOLED

    features = config.features
    return (
        Mode.parse(mode).kind == "lpft"
        and backbone in features.backbones
        and POOLED in features.layers
        and config.finetune.image_size == features.image_size
        # A grid of image sizes: the candidates at other sizes need other features.
        and "image_size" not in (config.finetune.grid or {})
        and not config.source.train_sizes
    )


def _probe_store(job: Job, context: RunContext) -> tuple[FeatureStore, Extraction] | None:
    """The feature store LP-FT's probe reads (see ``_reads_store``) and its extraction, or
    None."""
    if not _reads_store(context.config, job.backbone, job.mode):
        return None
    return feature_store(context, job.backbone)


def _computed_alike(store: FeatureStore, context: RunContext, job: Job) -> bool:
    """Whether ``store`` computed its features as the job's fine-tune computes them."""
    return probe.computed_alike(store, own_compute(context, job.backbone))


def own_compute(context: RunContext, backbone: str, built: dict | None = None) -> dict[str, str]:
    """How the run's fine-tunes of ``backbone`` compute (``probe.own_compute``): Pillow's
    decode, at the device's precision for the model's dtype (fp32 on the CPU, bf16 or fp16
    autocast on CUDA; fp64 for a float64 model)."""
    import torch

    return probe.own_compute(
        torch.device(context.device),
        context.config.features.decode,
        model_dtype(context, backbone, built),
    )


def model_dtype(context: RunContext, backbone: str, built: dict | None = None) -> torch.dtype:
    """The dtype of ``backbone``'s weights (``input_dtype``), found once per run: from the
    Backbone the checks built (``built``, by spec) when there is one."""

    def make():
        from featpipe.backbones import get_backbone

        model = built[backbone].model if built and backbone in built else None
        return input_dtype(model if model is not None else get_backbone(backbone).model)[1]

    return context.once(("dtype", backbone), make)


def planned(context: RunContext, job: Job, built: dict) -> dict:
    """What a finished fine-tune row must have been computed as to be reused (see
    ``PlannedRun.same_store``): the run's own ``compute``, which its config hash leaves out
    (a CPU run folder re-run on CUDA trains at bf16), and, for rows written before rows
    recorded it, the ``key`` of the store its LP-FT probe reads (None: it reads none)."""
    reads = _reads_store(context.config, job.backbone, job.mode)
    key = planned_store(context, job.backbone, built)["key"] if reads else None
    return {"key": key, "compute": own_compute(context, job.backbone, built)}


def stores_read(config: PipelineConfig) -> list[str]:
    """The backbones whose feature store the run reads: every feature backbone when it runs
    probes, and those whose store LP-FT's probe reads."""
    probes = bool(config.probes.heads and config.probes.layers)
    tuned = [
        bb
        for bb in config.finetune.backbones
        if any(_reads_store(config, bb, mode) for mode in config.finetune.modes)
    ]
    return list(dict.fromkeys([*(config.features.backbones if probes else ()), *tuned]))


def left_out(identity: dict, skipped: dict[str, str]) -> dict:
    """A fine-tune row's identity: its backbone's, and which images the run left out (sha256
    of their ids) when it left some out. The config hash cannot hold them (they are known once
    the stores are made), yet a fine-tune trained and tested without other images is another
    result: a run whose stores skip other images (another feature backbone) must not reuse it,
    nor resume its checkpoint. Runs that leave nothing out keep the identity they had."""
    return {**identity, LEFT_OUT: ids_sha256(sorted(skipped))} if skipped else identity


def with_left_out(context: RunContext, identity: dict) -> dict:
    """``left_out`` for a fine-tune job of this run: the identity its plan checks finished
    rows against, its checkpoint folder's and its row's (see ``_named``). Planning under
    torchrun opens no store for it (rank 0 alone would extract them, out of step with the
    other ranks): there a row made without skips is reused as before, one made with skips is
    made again."""
    if not _named(context.config):
        return identity
    if SOURCE not in context.made and current_ranks().distributed:
        return identity
    _, skipped = context.once(SOURCE, lambda: _source(context))
    return left_out(identity, skipped)


def _named(config: PipelineConfig) -> bool:
    """Whether a fine-tune's identity names the images it leaves out: when the run's feature
    stores decide them (on_error = "skip"; "fail" leaves none out). Without a store only
    unreadable images are left out, which the data fingerprint in the config hash already
    decides: a finished run is then not decoded again to find them."""
    return config.features.on_error == "skip" and bool(stores_read(config))


def _source(context: RunContext) -> tuple[ImageSource, dict[str, str]]:
    """The source fine-tunes train and are tested on, and the images it leaves out: those
    the run's feature stores skip, so that probes and fine-tunes are tested on the same
    images (comparisons pair them). Every store the run reads is opened (from the cache when
    there), not only those its unfinished probes opened, so a resumed run leaves out the
    same images as an uninterrupted one. With no store to read (no probe), every image is
    decoded once to find them, by the same rules as extraction."""
    stores = [feature_store(context, bb)[0] for bb in stores_read(context.config)]
    if stores:
        skipped = {sid: why for store in stores for sid, why in store.skipped().items()}
    else:
        skipped = unreadable_images(
            context.source,
            context.config.features.on_error,
            workers=context.config.finetune.workers,
            progress=context.progress,
        )
    if skipped:
        context.log(f"fine-tuning leaves out {skipped_rows(skipped)}")
    return without(context.source, skipped), skipped


def tuner_row(
    tuner,
    proba: np.ndarray,
    usage: Usage,
    predict_seconds: float,
    *,
    run: str,
    limits: dict,
    search: GridResult | None = None,
) -> ResultRow:
    """The row of a FineTuner fitted outside a pipeline (``featpipe finetune``): the same row
    a pipeline writes, hashed over the source, its ``limits`` and every setting that changes
    a result."""
    from featpipe.pipeline.config import SET_BY_RUNNER
    from featpipe.pipeline.runner import describe_device
    from featpipe.provenance import versions

    source = tuner.source_
    fingerprint = source.fingerprint()
    params = tuner.get_params()
    settings = {k: v for k, v in params.items() if k not in SET_BY_RUNNER}
    hashed = result_params(params)
    job = Job(
        NAME,
        f"{tuner.backbone}/finetune:{tuner.mode}",
        MethodKind.FINETUNE,
        f"fine-tuning ({tuner.mode})",
        tuner.backbone,
        tuner.seed,
        config_hash(
            {"data": fingerprint, "limits": limits, **hashed}
            | ({"grid": {k: list(v) for k, v in search.grid.items()}} if search else {})
        ),
        mode=tuner.mode,
    )
    provenance = {
        "source": {"description": source.describe(), "fingerprint": fingerprint},
        "versions": versions(),
        "device": describe_device(str(tuner.device_)),
    }
    context = RowContext(run, 1000, provenance)
    frozen = tuner.config_.get(FROZEN)  # what a partial:N fine-tune froze, as pipelines record
    return finetune_row(
        job,
        context,
        tuner,
        proba,
        usage,
        predict_seconds,
        settings,
        {},
        search=search,
        frozen=None if frozen is None else tuple(frozen),
    )
