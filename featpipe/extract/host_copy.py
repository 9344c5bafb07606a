"""Features from the device to host memory without making the loop wait for them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class PendingCopy:
    """Host tensors being filled from the device; ``arrays()`` waits until they are."""

    tensors: dict[str, torch.Tensor]
    done: torch.cuda.Event | None = None  # None: already on the host

    def arrays(self) -> dict[str, np.ndarray]:
        if self.done is not None:
            self.done.synchronize()
        return {name: t.numpy() for name, t in self.tensors.items()}


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
        return PendingCopy({name: t.to(dtype) for name, t in features.items()})
    host = {}
    for name, t in features.items():
        host[name] = torch.empty(t.shape, dtype=dtype, pin_memory=True)
        host[name].copy_(t.to(dtype), non_blocking=True)
    done = torch.cuda.Event()
    done.record(torch.cuda.current_stream(on_cuda[0].device))
    return PendingCopy(host, done)
