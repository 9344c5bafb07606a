"""Features from the device to host memory without making the loop wait for them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class PendingCopy:
    """Host tensors being filled from the device; ``arrays()`` waits until they are.
    ``peaks`` holds, for a cast to a narrower dtype (float16), each row's largest |value|
    before the cast: what the store's overflow error names (the values themselves are lost)."""

    tensors: dict[str, torch.Tensor]
    done: torch.cuda.Event | None = None  # None: already on the host
    peaks: dict[str, torch.Tensor] = field(default_factory=dict)

    def arrays(self) -> dict[str, np.ndarray]:
        if self.done is not None:
            self.done.synchronize()
        return {name: t.numpy() for name, t in self.tensors.items()}

    def peak_arrays(self) -> dict[str, np.ndarray]:
        """``{layer: (B,) float32}``, after :meth:`arrays`; empty where there was no cast."""
        return {name: t.numpy() for name, t in self.peaks.items()}


def _narrower(t: torch.Tensor, dtype: torch.dtype) -> bool:
    return dtype == torch.float16 and t.dtype != torch.float16


def _peak(t: torch.Tensor) -> torch.Tensor:
    """Each row's largest |value| (NaN where the row has one): one small reduction, next to
    the forward pass."""
    return t.detach().flatten(1).abs().amax(dim=1).float()


def start_copy(features: Mapping[str, torch.Tensor], dtype: torch.dtype) -> PendingCopy:
    """Begin copying ``features`` to the host as ``dtype``.

    On CUDA the copies are queued behind the forward pass, into pinned memory, and this
    returns at once: the loop can queue the next batch while the device finishes this one, and
    the writer thread waits for the copy instead (``PendingCopy.arrays``). Queued on the same
    stream as the forward pass, the copies need no other synchronisation: the caching
    allocator reuses a freed device tensor only for work queued after them.
    """
    on_cuda = [t for t in features.values() if t.device.type == "cuda"]
    if not on_cuda:
        return PendingCopy(
            {name: t.to(dtype) for name, t in features.items()},
            peaks={n: _peak(t) for n, t in features.items() if _narrower(t, dtype)},
        )
    host, peaks = {}, {}
    for name, t in features.items():
        host[name] = torch.empty(t.shape, dtype=dtype, pin_memory=True)
        host[name].copy_(t.to(dtype), non_blocking=True)
        if _narrower(t, dtype):
            peaks[name] = torch.empty(t.shape[0], dtype=torch.float32, pin_memory=True)
            peaks[name].copy_(_peak(t), non_blocking=True)
    done = torch.cuda.Event()
    done.record(torch.cuda.current_stream(on_cuda[0].device))
    return PendingCopy(host, done, peaks)
