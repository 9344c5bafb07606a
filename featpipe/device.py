"""Where torch work runs, and on how many CPU threads: shared by extraction, heads and
fine-tuning."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from featpipe.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when available; ``cuda`` (or ``cuda:N``) without CUDA raises."""
    kind = device.split(":", 1)[0]
    if kind not in DEVICES or (kind != "cuda" and ":" in device):
        raise ConfigError(f"Unknown device {device!r}; valid: auto, cpu, cuda, cuda:N.")
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"Device {device!r} was asked for, but torch sees no CUDA device "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda}). "
            "Use --device cpu or --device auto."
        )
    return torch.device(device)


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
