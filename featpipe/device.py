"""Where torch work runs, and on how many CPU threads: shared by extraction, heads and
fine-tuning."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from featpipe.distributed.ranks import current_ranks
from featpipe.errors import ConfigError
from featpipe.words import counted

DEVICES = ("auto", "cpu", "cuda")


def available_cores() -> int:
    """Cores this process may use: its CPU affinity (not the machine's count), shared
    evenly among the processes a launcher started on this machine (``LOCAL_WORLD_SIZE``
    under torchrun), so that N ranks do not each start a thread per core."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // current_ranks().local_world_size)


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` picks CUDA when available; ``cuda`` or ``cuda:N`` that this machine lacks
    raises. ``cuda`` means the current CUDA device (usually ``cuda:0``). Under torchrun,
    ``auto`` and ``cuda`` mean ``cuda:LOCAL_RANK`` (one GPU per process; with fewer GPUs
    than processes, they are shared in turn)."""
    device = str(device)
    kind, sep, index = device.partition(":")
    # ASCII digits only: "²".isdigit() holds but int("²") raises.
    if kind not in DEVICES or (
        sep and (kind != "cuda" or not (index.isascii() and index.isdigit()))
    ):
        raise ConfigError(f"Unknown device {device!r}; valid: auto, cpu, cuda, cuda:N.")
    if kind == "cpu" or (kind == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"Device {device!r} was asked for, but torch sees no CUDA device "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda}). "
            "Use --device cpu or --device auto."
        )
    if sep and int(index) >= (count := torch.cuda.device_count()):
        valid = ", ".join(f"cuda:{i}" for i in range(count))
        raise ConfigError(
            f"Device {device!r} was asked for, but torch sees {counted(count, 'CUDA device')}: "
            f"{valid} "
            "(CUDA_VISIBLE_DEVICES renumbers them from 0). Use one of those, or cuda."
        )
    if kind == "cpu":
        return torch.device("cpu")
    if not sep and current_ranks().distributed:
        return torch.device("cuda", current_ranks().local_rank % torch.cuda.device_count())
    return torch.device("cuda" if kind == "auto" else device)


@contextlib.contextmanager
def on_device(device: str | torch.device) -> Iterator[torch.device]:
    """Make ``device`` the current CUDA device inside the block, then restore the caller's.

    Work that uses the current device rather than an explicit one (DataLoader's pin-memory
    thread, ``torch.cuda.synchronize()``, cuBLAS handles) would otherwise open a context on
    GPU 0 and run or allocate there whatever ``cuda:N`` was asked for. CPU: nothing to do.
    """
    device = torch.device(device)
    if device.type != "cuda" or device.index is None:
        yield device
        return
    with torch.cuda.device(device):
        yield device


@contextlib.contextmanager
def torch_threads(n_threads: int | None = None) -> Iterator[None]:
    """Run torch CPU work on ``n_threads`` threads (None: every available core), then restore
    the caller's setting. Fewer threads help on a machine busy with other processes."""
    before = torch.get_num_threads()
    torch.set_num_threads(int(n_threads) if n_threads else available_cores())
    try:
        yield
    finally:
        torch.set_num_threads(before)


def amp_dtype(device: str | torch.device) -> torch.dtype | None:
    """The autocast dtype for ``device``, or None for plain fp32 (the CPU, whose fp32
    features then match across machines). CUDA: bf16 where the GPU has it natively
    (Ampere and later); fp16 on older GPUs (T4, V100), where bf16 is emulated and slow, and
    where training must then scale its loss (``torch.amp.GradScaler``)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    with torch.cuda.device(device):
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.bfloat16 if native else torch.float16


@contextlib.contextmanager
def cudnn_autotune(device: str | torch.device) -> Iterator[None]:
    """``cudnn.benchmark`` on inside the block on CUDA (fixed-size batches: cuDNN picks the
    fastest convolution algorithm once per shape), then the caller's setting again."""
    if torch.device(device).type != "cuda":
        yield
        return
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before
