"""Checkpoint files: atomic writes, tensors and plain containers only (``weights_only=True``)."""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import numpy as np
import torch

from featpipe.atomic import replace_with
from featpipe.errors import ConfigError

BEST, LAST = "best.pt", "last.pt"
# A new best.pt waits here until last.pt (which names the best epoch) is written.
PENDING = BEST + ".next"
# The way out of a run folder that cannot be resumed, where the caller names none.
START_OVER = "Start over with resume=False (CLI: --no-resume), or delete the run folder."


def rng_state(generator: torch.Generator) -> dict:
    """Every random state a training step reads, as tensors and primitives."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": pos,
            "has_gauss": has_gauss,
            "gauss": gauss,
        },
        "python": random.getstate(),
        "loader": generator.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    random.setstate(_as_tuples(state["python"]))
    generator.set_state(state["loader"])
    if "cuda" in state and torch.cuda.is_available():
        # One state per GPU the saving process saw; this one may see fewer (or none: a
        # checkpoint from a CUDA machine resumes on CPU). Restore those that exist.
        for index, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)


def _as_tuples(value):
    """random.setstate wants tuples back where serialisation may have made lists."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def save(path: str | Path, state: dict) -> None:
    """Write ``state`` to ``path`` whole and durably (see :func:`featpipe.atomic.replace_with`):
    a crash or power loss never leaves half a checkpoint, or a lost rename, under that name."""
    replace_with(path, lambda tmp: torch.save(state, tmp))


def save_epoch(run_dir: Path, last: dict, best: dict | None) -> None:
    """One epoch's ``last.pt`` and, when the epoch is the best so far, ``best.pt``, so that a
    crash at any point (a kill, a full disk) leaves the pair agreeing on the best epoch, or
    one step from it that :func:`settle_best` finishes: the new best waits as ``best.pt.next``
    until ``last.pt`` names it."""
    if best is not None:
        save(run_dir / PENDING, best)
    save(run_dir / LAST, last)
    if best is not None:
        os.replace(run_dir / PENDING, run_dir / BEST)


def settle_best(run_dir: Path, best_epoch: int, run: str | None = None) -> None:
    """Finish the epoch write a crash interrupted: ``best.pt.next`` becomes ``best.pt`` when
    ``last.pt`` names its epoch as the best and its ``run`` (a token each fresh start draws),
    and is dropped when ``last.pt`` was not written. The token tells a restart's epoch 0 apart
    from an earlier run's best epoch 0 (resume=False in the same folder, killed before its
    first last.pt); checkpoints from before the token have None."""
    pending = run_dir / PENDING
    if not pending.exists():
        return
    try:
        state = load(pending)
        written = (state.get("epoch"), state.get("run"))
    except (pickle.UnpicklingError, EOFError, RuntimeError, OSError):
        written = None  # cannot be the best last.pt names: save() writes whole files only
    if written == (best_epoch, run):
        os.replace(pending, run_dir / BEST)
    else:
        pending.unlink()


def load(path: str | Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def load_to_resume(path: Path, keys: tuple[str, ...], start_over: str | None = None) -> dict:
    """The checkpoint at ``path`` of a run to resume, holding ``keys``; a ConfigError naming
    the file and the way out (``start_over``, if given) when it is missing, damaged or
    something else."""
    start_over = start_over or START_OVER
    if not path.is_file():
        raise ConfigError(
            f"Cannot resume the run in {path.parent}: {path.name} is missing ({LAST} is "
            f"there; deleted, or copied without it). {start_over}"
        )
    reason = None
    with open(path, "rb") as f:  # a file that cannot be opened (permissions) keeps its error
        try:
            state = torch.load(f, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, EOFError, RuntimeError, OSError) as exc:
            # What torch.load raises on bytes it cannot read: garbage, empty, truncated.
            first = str(exc).strip().split("\n")[0].split(". ")[0][:100]  # torch's are long
            reason = f"{type(exc).__name__}: {first}".rstrip(": ")
    if reason is None:
        missing = [k for k in keys if k not in state] if isinstance(state, dict) else keys
        if not missing:
            return state
        reason = f"no {', '.join(missing)}"
    raise ConfigError(
        f"Cannot resume the run in {path.parent}: {path.name} is damaged or not a fine-tuning "
        f"checkpoint ({reason}). {start_over}"
    )


def check_best(best: dict, last: dict, path: Path, start_over: str | None = None) -> None:
    """A ConfigError unless ``best`` (``path``, a best.pt) is the epoch and run ``last``
    names as its best. :func:`save_epoch` and :func:`settle_best` keep the two in step, so
    a mismatch is a file copied in from another run folder: resuming would report that
    run's model as this one's."""
    written = (best.get("epoch"), best.get("run"))
    named = (last.get("best_epoch"), last.get("run"))
    if written != named:
        start_over = start_over or START_OVER
        raise ConfigError(
            f"Cannot resume the run in {path.parent}: {path.name} is not the best model "
            f"{LAST} names (it holds epoch {written[0]} of run {written[1]}, {LAST} names "
            f"epoch {named[0]} of run {named[1]}): copied from another run folder? Copy both "
            f"files of one run together. {start_over}"
        )


def check_optimizer(
    saved: dict, optimizer: torch.optim.Optimizer, path: Path, start_over: str | None = None
) -> None:
    """A ConfigError unless ``saved`` (an optimiser's state dict) fits ``optimizer``: the same
    parameter groups, each of as many parameters, each per-parameter state (momentum, Adam's
    averages) of its parameter's shape. Otherwise torch raises a ValueError, or where only
    shapes differ loads one parameter's momentum into another. What a partial:N mode froze
    changes them; checkpoints from before its ``frozen`` config key cannot say so."""
    start_over = start_over or START_OVER
    before = [len(g["params"]) for g in saved["param_groups"]]
    now = [len(g["params"]) for g in optimizer.param_groups]
    fits = before == now and all(
        value.shape == param.shape
        for old, new in zip(saved["param_groups"], optimizer.param_groups, strict=True)
        for index, param in zip(old["params"], new["params"], strict=True)
        for value in saved["state"].get(index, {}).values()
        if isinstance(value, torch.Tensor) and value.dim()  # not a step count
    )
    if not fits:
        raise ConfigError(
            f"Cannot resume the run in {path.parent}: {path.name}'s optimiser state does not "
            f"fit the parameters that train now (parameter groups of {before} parameters in "
            f"{path.name}, {now} now): what the mode freezes changed since it was written "
            f"(the backbone's stage list, or featpipe's rule for the mode). {start_over}"
        )


def _difference(key: str, saved, current) -> str:
    """One setting's difference; for a dict (the backbone's identity), the fields that differ,
    whose values (hashes, whole preprocessing) would drown the message."""
    if key == "precision":
        return (
            f"precision: trained at {saved}, this fit trains at {current} (the device's: fp32 "
            "on the CPU, bf16 or fp16 autocast on CUDA; resume on the device it was trained on)"
        )
    if isinstance(saved, dict) and isinstance(current, dict):
        fields = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        return f"{key} differs in {', '.join(fields)}"
    if key == "source" and isinstance(saved, str) and isinstance(current, str):
        # Two bare hashes would not say what changed: a copy that reset the files' times reads
        # the same as new images.
        return (
            "source: its images are not the checkpoint's (files added, removed or renamed, other "
            "labels or splits, or a changed file: another size or modification time, as a copy "
            "that did not keep the times gives, or other contents where they are hashed; "
            f"fingerprint {saved[:12]}, now {current[:12]})"
        )
    return f"{key}: checkpoint {saved!r}, now {current!r}"


def check_config(
    saved: dict,
    current: dict,
    path: Path,
    defaults: dict | None = None,
    start_over: str | None = None,
) -> None:
    """Resuming with other settings would silently mix two experiments: refuse. ``defaults``:
    the values of settings a config leaves out at their default; ``start_over``: the way out
    to name instead of resume=False."""
    defaults = defaults or {}
    keys = sorted(set(saved) | set(current))
    pairs = [(k, saved.get(k, defaults.get(k)), current.get(k, defaults.get(k))) for k in keys]
    diff = [_difference(k, before, now) for k, before, now in pairs if before != now]
    if diff:
        start_over = start_over or (
            "Use another run directory, or resume=False (CLI: --no-resume) to start over."
        )
        raise ConfigError(
            f"Checkpoint {path} was written with another configuration ({'; '.join(diff)}). "
            f"{start_over}"
        )
