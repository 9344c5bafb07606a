"""Who this process is in a multi-process job, from the environment ``torchrun`` sets, and the
process group featpipe uses for control.

torchrun (and ``srun torchrun``) exports ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE`` and ``TORCHELASTIC_RESTART_COUNT``; a plain ``python`` process has none
of them and is rank 0 of 1. Control (plans, part claims, small gathers) always goes through
gloo, which works on CPUs and beside NCCL on GPUs: on CUDA the group is made with
``"cpu:gloo,cuda:nccl"``, so CPU tensors take gloo and CUDA tensors (DDP's gradients) NCCL.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import datetime as dt
import hashlib
import os
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from featpipe.errors import ConfigError
from featpipe.words import listed

# torchrun sets all of these for every worker it starts.
_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job: ``rank`` of ``world_size``, ``local_rank`` of the
    ``local_world_size`` processes on this machine, and ``restart`` (how many times torchrun
    restarted the workers: elastic restarts are resumes)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    restart: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 prints run-level messages and writes what only one process may write."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def tag(self) -> str:
        """``"rank 1/4"``, or "" for a single process: a prefix for warnings and log lines."""
        return f"rank {self.rank}/{self.world_size}" if self.distributed else ""


_ALONE = contextvars.ContextVar("featpipe_alone", default=False)


def under_torchrun() -> bool:
    """Whether this process was started by torchrun (or a launcher that sets the same
    variables) and works with its other ranks: inside :func:`alone`, it does not."""
    return _launched() and not _ALONE.get()


def _launched() -> bool:
    missing = [name for name in _TORCHRUN_VARS if name not in os.environ]
    said = "WORLD_SIZE" if _said("WORLD_SIZE") > 1 else "RANK" if _said("RANK") > 0 else None
    if missing and said:
        # One of several processes (WORLD_SIZE > 1, or RANK > 0) that cannot meet the others:
        # working alone, each would do the whole job and write the same store and run folder.
        raise ConfigError(
            f"{said}={os.environ[said]} says this process is one of several, "
            f"but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: "
            "featpipe runs as several processes only under torchrun, which sets all of "
            f"{', '.join(_TORCHRUN_VARS)}. Launch with `torchrun ... -m featpipe ...`, or "
            f"unset {said} to run one process alone."
        )
    return not missing


def _said(name: str) -> int:
    """The integer in ``name`` (WORLD_SIZE or RANK), 0 when unset or not a number (then
    current_ranks says so when the rest is set)."""
    try:
        return int(os.environ.get(name, "0"))
    except ValueError:
        return 0


@contextlib.contextmanager
def alone() -> Iterator[None]:
    """Work inside the block as a single process, though torchrun started this one: for
    what one rank does after the others have left (rank 0 fitting a pipeline's probes),
    where joining a process group or a collective would wait for ranks that are gone.
    :func:`current_ranks` still says which rank this is (warnings keep their tag)."""
    token = _ALONE.set(True)
    try:
        yield
    finally:
        _ALONE.reset(token)


def current_ranks() -> Ranks:
    """The :class:`Ranks` of this process (rank 0 of 1 outside torchrun)."""
    if not _launched():
        return Ranks()
    values = {}
    for field, name, default in (
        ("rank", "RANK", None),
        ("world_size", "WORLD_SIZE", None),
        ("local_rank", "LOCAL_RANK", None),
        ("local_world_size", "LOCAL_WORLD_SIZE", "1"),
        ("restart", "TORCHELASTIC_RESTART_COUNT", "0"),
    ):
        text = os.environ.get(name, default)
        try:
            values[field] = int(text)
        except (TypeError, ValueError):
            raise ConfigError(
                f"The environment variable {name} must be an integer; got {text!r}. It is set "
                "by torchrun: launch with `torchrun ... -m featpipe ...` rather than setting it."
            ) from None
    ranks = Ranks(**values)
    if ranks.local_world_size < 1:
        raise ConfigError(
            f"LOCAL_WORLD_SIZE={ranks.local_world_size} must be >= 1 (the processes on this "
            "machine); it is set by torchrun."
        )
    if not (0 <= ranks.rank < ranks.world_size and ranks.local_rank >= 0):
        raise ConfigError(
            f"RANK={ranks.rank} and WORLD_SIZE={ranks.world_size} do not fit (0 <= RANK < "
            "WORLD_SIZE); they are set by torchrun."
        )
    return ranks


def backend_for(device: torch.device | str) -> str:
    """gloo for control on every device; NCCL beside it for CUDA tensors."""
    return "cpu:gloo,cuda:nccl" if torch.device(device).type == "cuda" else "gloo"


_CALLS: collections.Counter[str] = collections.Counter()


def channel(kind: str, restart: int) -> str:
    """The keys under which the ranks meet for this process's next ``kind`` call (a process
    group, a pipeline run, a parted extraction): the n-th call of every rank meets under the
    n-th channel. torchrun's store keeps every key for the whole job, so a second call (a
    script running two pipelines) under the first call's keys read its stale messages; new
    for each elastic restart too. Every rank makes the same calls in the same order, so the
    counts agree."""
    _CALLS[kind] += 1
    return f"featpipe/{kind}/{restart}/{_CALLS[kind]}"


@contextlib.contextmanager
def process_group(
    device: torch.device | str = "cpu", timeout_s: float = 1800.0
) -> Iterator[dist.Store | None]:
    """The default process group of this torchrun job, initialised from the environment
    if it is not yet (and destroyed at the end if this call made it); yields the job's
    key-value store (the TCPStore torchrun hosts), or None outside torchrun, where there is
    no group and every process works alone."""
    if not under_torchrun():
        yield None
        return
    made = not dist.is_initialized()
    if made:
        timeout = dt.timedelta(seconds=timeout_s)
        store, rank, world_size = next(dist.rendezvous("env://", timeout=timeout))
        # torchrun's agent keeps its store for the whole job: under the keys of a group
        # before (the attempt before an elastic restart, or this process's last group: a
        # script fine-tuning twice), the workers found its gone workers' addresses (gloo:
        # "connection refused", or a hang), so each restart and each group gets keys of its
        # own.
        store = dist.PrefixStore(channel("group", current_ranks().restart), store)
        dist.init_process_group(
            backend=backend_for(device),
            store=store,
            rank=rank,
            world_size=world_size,
            timeout=timeout,
        )
    try:
        yield dist.distributed_c10d._get_default_store()
    finally:
        if made and dist.is_initialized():
            dist.destroy_process_group()


def refuse_other_settings(
    settings: Mapping[str, object],
    what: str,
    *,
    source: object = None,
    own: Collection[str] = (),
) -> None:
    """In a process group, refuse on every rank (in one line) ``settings`` that differ from
    rank 0's, compared as their repr, and a ``source`` with other images, labels or splits
    (a digest of its ``ids``, ``labels``, ``splits`` and ``classes``). Ranks started with
    other settings would otherwise mix them silently: DDP averages the gradients of ranks
    that each step with their own learning rate. ``own``: settings a rank may set for itself
    (its device, its verbosity). Outside a process group, or :func:`alone`, nothing to
    compare."""
    if not under_torchrun() or not dist.is_initialized() or dist.get_world_size() == 1:
        return
    mine = {name: repr(value) for name, value in settings.items() if name not in own}
    if source is not None:
        mine["source"] = _source_digest(source)
    every: list[dict[str, str] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)  # every rank sees every difference, and refuses
    main = every[0]
    differ = [
        f"rank {rank} {name} {theirs.get(name)} (rank 0: {main.get(name)})"
        for rank, theirs in enumerate(every[1:], 1)
        for name in sorted(main.keys() | theirs.keys())
        if main.get(name) != theirs.get(name)
    ]
    if differ:
        shown = listed(differ, 4, sep="; ")
        raise ConfigError(
            f"The ranks of this torchrun job were given other {what} settings than rank 0: "
            f"{shown}. Start every rank with the same command, options and data."
        )


def _source_digest(source) -> str:
    """A digest of the images a source holds (ids, labels, splits, class names): not of their
    files, which would take a pass over them."""
    h = hashlib.sha256()
    for sample_id in source.ids:
        h.update(str(sample_id).encode() + b"\0")
    for name in ("labels", "splits"):
        h.update(np.ascontiguousarray(np.asarray(getattr(source, name)), dtype=np.int64).data)
    h.update("\0".join(map(str, source.classes)).encode())
    return f"{len(source.ids)} images, digest {h.hexdigest()[:12]}"
