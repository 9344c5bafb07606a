"""What a method costs: wall time, peak host memory (RSS) and peak device memory."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


class Timer:
    """Wall-clock seconds of a ``with`` block (``perf_counter``)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._start = 0.0

    def __enter__(self) -> Timer:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._start


def peak_host_rss_bytes() -> int:
    """Peak resident set size of this process: VmHWM on Linux (resettable, see
    :func:`reset_peak_host_rss`), else ``ru_maxrss`` (lifetime peak)."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # macOS reports bytes


def reset_peak_host_rss() -> bool:
    """Reset the kernel's peak-RSS mark so that the next reading covers only what follows
    (Linux >= 4.0: writing 5 to /proc/self/clear_refs). Returns False where unsupported, in which
    case peaks are lifetime peaks and only grow."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def _cuda_device(device: str | None):
    """The ``torch.device`` to read memory on, or None off-GPU. Always explicit: the calls
    without one read the current device, which is GPU 0 whatever ``cuda:N`` the work ran on."""
    if not device or not str(device).startswith("cuda"):
        return None
    import torch

    return torch.device(device) if torch.cuda.is_available() else None


@dataclass
class Cost:
    """Filled in when the ``measure`` block ends."""

    seconds: float = 0.0
    peak_host_bytes: int = 0
    peak_device_bytes: int | None = None  # None off-GPU
    host_peak_is_lifetime: bool = False


@contextmanager
def measure(device: str | None = None) -> Iterator[Cost]:
    """Time a block and record the peak host RSS (and CUDA memory on ``device``) inside it."""
    cost = Cost()
    cost.host_peak_is_lifetime = not reset_peak_host_rss()
    gpu = _cuda_device(device)
    if gpu is not None:
        import torch

        torch.cuda.synchronize(gpu)
        torch.cuda.reset_peak_memory_stats(gpu)
    start = time.perf_counter()
    try:
        yield cost
    finally:
        if gpu is not None:
            torch.cuda.synchronize(gpu)
            cost.peak_device_bytes = int(torch.cuda.max_memory_allocated(gpu))
        cost.seconds = time.perf_counter() - start
        cost.peak_host_bytes = peak_host_rss_bytes()
