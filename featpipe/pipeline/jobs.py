"""What stages share: a job (one method and seed of a run), what its rows hold in common, and
the run's state a job may use."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featpipe.data import ImageSource
from featpipe.evaluate import compute_metrics
from featpipe.report.results import MethodKind, Predictions, ResultRow

if TYPE_CHECKING:
    from featpipe.pipeline.config import PipelineConfig


def config_hash(settings: object) -> str:
    """The hash of the settings a method depends on (JSON, keys sorted)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Job:
    """One (method, seed) of a run, planned by ``stage``."""

    stage: str
    method: str
    kind: MethodKind
    label: str
    backbone: str
    seed: int
    config_hash: str
    layer: str | None = None
    head: str | None = None
    mode: str | None = None
    deterministic: bool = False  # the seed changes nothing: run once, with the first seed
    train_size: int | None = None  # train images of a data-size sweep; None: all of them
    # The backbone (spec, image size) whose identity its row records: a finished row is
    # reused only while that identity is unchanged (see backbone_identity, RunPlan.select).
    backbone_at: tuple[str, int | None] | None = None
    # What a partial:N fine-tune freezes, which its backbone's identity leaves out (the stage
    # list decides it): its row records it, and is reused only while it is the same.
    frozen: tuple[str, ...] | None = None
    # The backbone whose compute its row records (precision, decode path), which its config
    # hash leaves out: a probe's feature store (see planned_store), a fine-tune's own training
    # and LP-FT probe (see stages/finetune.planned). The row is reused only while the run
    # would compute alike.
    store_of: str | None = None
    # The job's config hash had the run been at another n_boot under the featpipe versions
    # that hashed it (see HASHED_N_BOOT): it tells a row those made, which this run fits
    # again, so that the run can say why. None where the stage does not say.
    hash_at_n_boot: Callable[[int], str] | None = field(default=None, compare=False, repr=False)

    @property
    def key(self) -> tuple[str, int, str]:
        return self.method, self.seed, self.config_hash


@dataclass(frozen=True)
class PlanData:
    """What planning knows of the data: its fingerprint (in every config hash) and whether
    heads choose by cross-validation (no validation split: the seed draws the folds)."""

    fingerprint: str
    cv_selection: bool = False
    backbones: dict = field(default_factory=dict)  # the Backbones the checks built, by spec


@dataclass
class RowContext:
    """What every row of a run shares: its name, bootstrap resamples and provenance."""

    run: str
    n_boot: int
    provenance: dict

    def row(self, job: Job, *, test: Predictions, provenance: dict, **fields: Any) -> ResultRow:
        """A result row of ``job``: its identity, the run's provenance updated with the
        method's own, and the measured ``fields`` (metrics, cost, params, ...)."""
        return ResultRow(
            run=self.run,
            method=job.method,
            kind=job.kind,
            label=job.label,
            backbone=job.backbone,
            layer=job.layer,
            head=job.head,
            mode=job.mode,
            seed=job.seed,
            deterministic=job.deterministic,
            train_size=job.train_size,
            config_hash=job.config_hash,
            test=test,
            provenance={**self.provenance, **provenance},
            **fields,
        )

    def metrics(
        self,
        y: np.ndarray,
        proba: np.ndarray,
        classes: list[str],
        seed: int,
        *,
        probabilistic: bool = True,
        y_pred: np.ndarray | None = None,
    ) -> dict:
        """``compute_metrics`` on the test split. Scores that are not probabilities (an SVM's
        softmaxed decision function) rank classes but give no log loss or calibration."""
        metrics = compute_metrics(y, proba, classes, n_boot=self.n_boot, seed=seed, y_pred=y_pred)
        if not probabilistic:
            metrics["log_loss"] = metrics["ece"] = None
            metrics["ci"].pop("log_loss", None)
        return metrics


@dataclass
class RunContext(RowContext):
    """A running pipeline: its config, source, device and run folder, and what its jobs made
    once for the jobs after them (feature stores, the fine-tuning source)."""

    config: PipelineConfig
    source: ImageSource
    device: str
    run_dir: Path
    progress: bool = True
    log: Callable[[str], None] = print
    made: dict = field(default_factory=dict)

    def once(self, key: object, make: Callable[[], Any]) -> Any:
        """``make()`` the first time ``key`` is asked for, the same object afterwards."""
        if key not in self.made:
            self.made[key] = make()
        return self.made[key]


def backbone_identity(context: RunContext, job: Job) -> dict | None:
    """The identity (``Backbone.identity()``) of the backbone ``job`` uses now (see
    ``Job.backbone_at``), found once per run; None for a job that records none."""
    if job.backbone_at is None:
        return None
    spec, image_size = job.backbone_at

    def make() -> dict:
        from featpipe.backbones import get_backbone

        return get_backbone(spec, image_size).identity()

    identity = context.once(("identity", spec, image_size), make)
    if job.stage == "finetune":  # and the images it leaves out (see with_left_out)
        from featpipe.pipeline.stages.finetune import with_left_out

        return with_left_out(context, identity)
    return identity


def skip_summary(skipped: dict[str, str], shown: int = 5) -> dict:
    """What a result row says about the images its method left out: how many, and the first
    few with their reasons."""
    return {"count": len(skipped), "first": dict(list(skipped.items())[:shown])}


def sweep(config: PipelineConfig) -> tuple[int | None, ...]:
    """The training-set sizes each method runs at: (None,) for the whole train split."""
    return tuple(sorted(config.source.train_sizes)) or (None,)


def sized(job: Job, size: int | None, split_seed: int = 0) -> Job:
    """``job`` at one size of a data-size sweep: its own method name (reports keep one row
    per method and seed), label and config hash. ``None`` leaves the job as it is.
    ``split_seed`` draws the subset, so it is hashed too (only when not 0, so that sweeps
    run before it was keep their hashes)."""
    if size is None:
        return job
    drawn = {"split_seed": split_seed} if split_seed else {}

    def at_size(method_hash: str) -> str:
        return config_hash({"method": method_hash, "train_size": size, **drawn})

    old = job.hash_at_n_boot
    return replace(
        job,
        method=f"{job.method}#n={size}",
        label=f"{job.label}, {size} train images",
        config_hash=at_size(job.config_hash),
        train_size=size,
        hash_at_n_boot=None if old is None else lambda n_boot: at_size(old(n_boot)),
    )


def at_sizes(config: PipelineConfig, jobs: list[Job]) -> list[Job]:
    """Every job at every size of the config's sweep, smallest size first (``jobs`` as they
    are without a sweep)."""
    seed = config.source.split_seed
    return [sized(job, size, seed) for size in sweep(config) for job in jobs]


def sweep_ids(context: RunContext, size: int | None) -> frozenset[str] | None:
    """The ids of the train images a method sees at one size of the sweep (None: all)."""
    if size is None:
        return None
    from featpipe.data.splits import train_subset

    def make() -> frozenset[str]:
        sub = train_subset(context.source, size, context.config.source.split_seed)
        return frozenset(sub.ids[r] for r in sub.indices("train"))

    return context.once(("train ids", size), make)


def backbone_suffix(config: PipelineConfig) -> Callable[[str], str]:
    """Labels name the backbone only when the run has several."""
    several = len(set(config.features.backbones) | set(config.finetune.backbones)) > 1
    return (lambda bb: f" [{bb}]") if several else (lambda bb: "")


# Config hashes held the run's n_boot until reports computed their intervals from a row's test
# predictions at the run's n_boot (another n_boot reuses every row): the default of then stays
# in them, so that rows made at it keep their hashes. It is 1000 forever, not DEFAULT_BOOT:
# were the default to change, every row made since would lose its hash. Rows made then at
# another n_boot are fitted again once, and the run says so (see hashes_at_n_boot): reusing
# them would take a second hash for every job and row lookup, for a cost each run folder pays
# once.
HASHED_N_BOOT = {"n_boot": 1000}


def hashes_at_n_boot(settings: dict) -> Callable[[int], str]:
    """The config hash of a job's ``settings`` at any n_boot, as featpipe versions that keyed
    jobs on the run's n_boot gave it (see :attr:`Job.hash_at_n_boot`)."""
    return lambda n_boot: config_hash({**settings, "n_boot": n_boot})


def decode_setting(config: PipelineConfig) -> dict[str, str]:
    """``features.decode`` for a job's config hash: hashed only when not ``exact``, so that
    runs made before the option existed keep their hashes."""
    decode = config.features.decode
    return {} if decode == "exact" else {"decode": decode}
