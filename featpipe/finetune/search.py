"""A fine-tuning grid: every combination trains, validation accuracy chooses.

Each candidate is a copy of one ``FineTuner`` with some settings changed (``lr``,
``weight_decay``, ``dropout``, ...), reporting to the same ``callbacks`` objects. Candidates
select their epoch on val as usual; the candidate with the best validation accuracy at its best
epoch wins (ties: the first in grid order). Nothing here reads the test split: the caller
tests the winner, once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sklearn.model_selection import ParameterGrid

from featpipe.data.source import ImageSource
from featpipe.device import resolve_device
from featpipe.errors import ConfigError, FeaturePipeError
from featpipe.finetune import ddp
from featpipe.finetune.tuner import NOT_RESULT_PARAMS, FineTuner, warn_if_val_cannot_choose
from featpipe.heads.selection import check_grid_entries, in_increasing_order
from featpipe.interrupt import Interrupted
from featpipe.store import FeatureStore

# Candidates must be compared on the same validation rows; these choose them.
SAME_VAL = {
    "val_fraction": "it sets how many train rows are carved as val",
    "seed": "it chooses which train rows are carved as val (and the initialisation: the "
    "best of several seeds is a lucky draw, not a better recipe)",
}
# A grid varies the recipe, not what is fine-tuned or how the run is kept.
NOT_SEARCHED = (*NOT_RESULT_PARAMS, "backbone", "mode", *SAME_VAL)


def searchable_params() -> list[str]:
    """FineTuner settings a grid may vary."""
    return [p for p in FineTuner().get_params() if p not in NOT_SEARCHED]


def check_grid(grid: dict, where: str = "grid") -> None:
    """A ConfigError unless ``grid`` maps searchable settings to non-empty lists."""
    valid = searchable_params()
    if not isinstance(grid, dict):
        raise ConfigError(f"{where} must be a table of setting = [values]; got {grid!r}.")
    for name in grid:
        if name in SAME_VAL:
            raise ConfigError(
                f"{where}.{name}: cannot be searched, because candidates must be compared on "
                f"the same validation rows and {SAME_VAL[name]}. Set {name} once, for every "
                "candidate."
            )

    def example(_name: str, _values: object) -> str:
        return "lr = [0.01, 0.05]"

    # Lists and tuples only: a grid is kept in the run's JSON (and read from TOML or --grid).
    check_grid_entries(grid, valid, where, "searchable fine-tuning setting", example, (list, tuple))
    for name, values in grid.items():
        repeated = [v for i, v in enumerate(values) if v in values[:i]]
        if repeated:
            # The same candidate twice shares a folder: the second resumes the first's run,
            # and the grid's cost counts its seconds twice.
            raise ConfigError(
                f"{where}.{name} lists {repeated[0]!r} more than once (in {list(values)!r}); "
                "list each value once."
            )


def check_candidates(tuner: FineTuner, grid: dict, where: str = "grid") -> None:
    """Every combination of ``grid`` over ``tuner``'s settings (``tuner`` alone for an empty
    grid), checked before any trains: a ConfigError naming the first bad candidate."""
    check_grid(grid, where)
    for params in ParameterGrid(dict(grid)):
        try:
            type(tuner)(**{**tuner.get_params(), **params})._check_params()
        except FeaturePipeError as exc:
            if not params:
                raise
            raise ConfigError(f"{where} candidate {params}: {exc}") from None


def _check_batches_of_one(tuner: FineTuner, candidates: list[dict]) -> None:
    """A ConfigError for a candidate whose training batches hold one image through batch
    norm that trains, before the first candidate trains (its own fit refuses it only when its
    turn comes). Builds the backbone only for such candidates."""
    from featpipe.backbones import get_backbone
    from featpipe.finetune.freezing import Mode, check_batches_of_one, freeze
    from featpipe.finetune.tuner import spec_for

    world = ddp.world_size()
    mode = Mode.parse(tuner.mode)
    for params in candidates:
        settings = {**tuner.get_params(), **params}
        one = ddp.per_rank_batch(int(settings["batch_size"]), world) == 1
        if not one or (settings["sync_bn"] and world > 1):  # SyncBatchNorm: every rank's
            continue
        backbone = get_backbone(spec_for(tuner.backbone, mode), settings["image_size"])
        frozen = freeze(backbone.model, mode, backbone.stages, backbone.classifier or "")
        said = f"grid candidate {params}: batch_size {settings['batch_size']}"
        check_batches_of_one(backbone.model, frozen, said, world)


@dataclass
class GridResult:
    """The fitted winner, its settings, and every candidate's validation accuracy."""

    best: FineTuner
    params: dict
    curve: list[tuple[dict, float]]
    grid: dict  # what was searched
    fit_seconds: float  # all candidates together: the grid's real cost
    # The same in process-seconds: each candidate's pieces at the processes that trained them
    # (a finished candidate run again trained nothing now, whatever the world size now).
    fit_process_seconds: float


def candidate_dir(run_dir: str | Path | None, params: dict) -> Path | None:
    """Each candidate's own checkpoint folder, so that an interrupted grid resumes."""
    if run_dir is None:
        return None
    name = ",".join(f"{k}={v}" for k, v in sorted(params.items()))
    return Path(run_dir) / "".join(c if c.isalnum() or c in "-_.,=" else "_" for c in name)


def fit_grid(
    tuner: FineTuner,
    source: ImageSource,
    grid: dict,
    *,
    probe_features: FeatureStore | None = None,
    command: str = "the same command",
    fingerprint: str | None = None,
    keyed_run_dir: bool = False,
) -> GridResult:
    """Fit ``tuner`` once per combination of ``grid`` (``{"lr": [...], ...}``) and keep the
    one with the best validation accuracy. Only the winner is kept in memory. An interrupted
    grid raises ``Interrupted`` saying which candidate stopped where, and to run ``command``.
    ``fingerprint``, ``keyed_run_dir``: as ``FineTuner.fit``'s."""
    check_candidates(tuner, grid)  # a bad value fails now, not after the others trained
    # Under torchrun, one process group around every candidate (each fit would make and
    # destroy its own): the checks and warnings here then see the ranks, not rank 0 on each.
    with ddp.joined(resolve_device(tuner.device)):
        best, best_params, curve, seconds, process_seconds = None, None, [], 0.0, 0.0
        # a tie goes to the first: the same candidate whatever order the grid lists it in
        candidates = list(ParameterGrid(in_increasing_order(dict(grid))))
        _check_batches_of_one(tuner, candidates)
        probes: dict = {}  # LP-FT: one probe for the candidates that differ only in training
        for i, params in enumerate(candidates, 1):
            # Not sklearn's clone: it deep-copies the callbacks; the caller's would see nothing.
            run_dir = candidate_dir(tuner.run_dir, params)
            candidate = type(tuner)(**{**tuner.get_params(), **params, "run_dir": run_dir})
            try:
                candidate.fit(
                    source,
                    probe_features=probe_features,
                    fingerprint=fingerprint,
                    keyed_run_dir=keyed_run_dir,
                    probes=probes,
                )
            except KeyboardInterrupt as exc:
                where = f"grid candidate {i} of {len(candidates)} ({_named(params)})"
                message = f"{where}: {candidate.interrupted_message(command)}"
                raise Interrupted.from_exception(exc).with_message(message) from None
            score = float(candidate.best_score_[0])
            curve.append((params, score))
            seconds += candidate.fit_seconds_
            process_seconds += candidate.fit_process_seconds_
            if best is None or score > float(best.best_score_[0]):
                best, best_params = candidate, params
        if len(candidates) > 1:
            warn_if_val_cannot_choose(best, f"grid candidate {_named(best_params)}")
        return GridResult(best, best_params, curve, dict(grid), seconds, process_seconds)


def _named(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


__all__ = ["GridResult", "check_candidates", "check_grid", "fit_grid", "searchable_params"]
