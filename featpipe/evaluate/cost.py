"""What a method costs: wall time, peak host memory (RSS of this process: DataLoader worker
processes are not in it) and peak device memory.

``measure`` records the :class:`Usage` of a block; :meth:`Cost.of` turns usages and timings
into the one cost record a result row holds, whatever stage produced it.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
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
class Usage:
    """Filled in when the ``measure`` block ends."""

    seconds: float = 0.0
    peak_host_bytes: int = 0
    peak_device_bytes: int | None = None  # None off-GPU
    host_peak_is_lifetime: bool = False


@dataclass(frozen=True)
class Extraction:
    """The cost of the feature store a method read: every run that built it, summed (also when
    this run reused or resumed it)."""

    seconds: float = 0.0
    images: int = 0
    reused: bool = False
    peak_host_bytes: int | None = None


@dataclass(frozen=True, kw_only=True)
class Cost:
    """A result row's ``cost`` (documented in :mod:`featpipe.report.results`)."""

    extraction_seconds: float
    extraction_reused: bool
    # Written only for methods that read a feature store this run extracted (rows may lack it):
    # a reused store's extraction ran before, its peak unknown.
    extraction_peak_host_bytes: int | None = field(default=None, metadata={"optional": True})
    fit_seconds: float
    # A fine-tune's: each resumed piece's seconds once per process of that piece.
    fit_process_seconds: float | None = field(default=None, metadata={"optional": True})
    predict_seconds: float
    total_seconds: float
    images_per_s: float | None
    peak_host_bytes: int
    peak_device_bytes: int | None
    trainable_params: int | None

    @classmethod
    def of(
        cls,
        usage: Usage,
        *,
        fit_seconds: float,
        predict_seconds: float,
        n_test: int,
        trainable_params: int | None,
        extraction: Extraction | None = None,
        fit_process_seconds: float | None = None,
        tested_on_store: bool = True,
    ) -> Cost:
        """The cost of a method that ran inside ``usage``, read ``extraction``'s store (None:
        it ran the backbone itself) and predicted ``n_test`` images in ``predict_seconds``.
        Throughput counts the backbone's share of each image: its extraction time per image,
        when the test images were read from the store (not LP-FT's, whose store trained only
        its probe)."""
        ext = extraction or Extraction()
        per_image = ext.seconds / ext.images if ext.images and tested_on_store else 0.0
        busy = per_image * n_test + predict_seconds
        return cls(
            extraction_seconds=float(ext.seconds),
            extraction_reused=bool(ext.reused),
            fit_seconds=float(fit_seconds),
            fit_process_seconds=None if fit_process_seconds is None else float(fit_process_seconds),
            predict_seconds=float(predict_seconds),
            total_seconds=float(ext.seconds + fit_seconds + predict_seconds),
            images_per_s=n_test / busy if predict_seconds else None,
            peak_host_bytes=usage.peak_host_bytes,
            peak_device_bytes=usage.peak_device_bytes,
            trainable_params=trainable_params,
            extraction_peak_host_bytes=None if ext.reused else ext.peak_host_bytes,
        )

    def to_json(self) -> dict:
        optional = ("extraction_peak_host_bytes", "fit_process_seconds")
        return {k: v for k, v in self.__dict__.items() if not (k in optional and v is None)}


@contextmanager
def measure(device: str | None = None) -> Iterator[Usage]:
    """Time a block and record the peak host RSS of this process (and CUDA memory on
    ``device``) inside it. Worker processes are left out: forked, most of their RSS is pages
    shared with this process (summed, they would count them twice)."""
    cost = Usage()
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
