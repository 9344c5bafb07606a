"""Extraction on a CPU device in lanes: threads that each decode a batch and run the model on it.

On a CPU the decoding and the forward pass share the cores. A forward pass on every core waits
at each op's barrier for its slowest thread, and decoding processes beside it preempt its
threads, so each op waits longer still. A lane is a thread that decodes a whole batch and then
runs the model on it with its share of the cores (``cores // lanes`` intra-op threads): lanes
never wait for each other, and a lane that decodes leaves the other cores to lanes that
compute. Pillow's decoder and torch's ops release the GIL, so lanes run in parallel. On a
2-core CPU, two one-thread lanes compute 1.2-1.5 times the images per second of one forward
pass on both cores (ResNet-50, EfficientNet-Lite0; benchmarks/README.md).

torch's intra-op thread count is one setting for the whole process, so it is set for the run
(:func:`featpipe.device.torch_threads`) and every lane gets the same share.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

import torch

from featpipe.device import available_cores, torch_threads

T = TypeVar("T")


def lane_count(device: torch.device, workers: int, compiled: bool) -> int:
    """How many lanes extraction runs in: ``workers`` on a CPU device, 0 (loader workers, or
    the main thread for ``workers=0``) on CUDA and for a ``torch.compile``d model, which is
    not safe to call from several threads at once."""
    return workers if device.type == "cpu" and not compiled else 0


def threads_per_lane(lanes: int) -> int:
    """Intra-op threads of each of ``lanes`` lanes: the available cores shared evenly."""
    return max(1, available_cores() // lanes)


class Lanes(Generic[T]):
    """``work(0)``, ``work(1)``, ... ``work(count - 1)`` run in ``lanes`` threads; iterating
    yields their results in order, and re-raises a lane's exception where its result was due.
    At most ``2 * lanes`` items are computed ahead of the consumer. ``close()`` drops the items
    not started and waits for those running (a lane finishes its batch)."""

    def __init__(self, work: Callable[[int], T], count: int, lanes: int):
        self._work = work
        self._count = count
        self._depth = 2 * lanes
        self._pool = ThreadPoolExecutor(lanes, thread_name_prefix="featpipe-lane")
        self._ahead: deque[Future[T]] = deque()
        self._submitted = 0

    def _fill(self) -> None:
        while self._submitted < self._count and len(self._ahead) < self._depth:
            self._ahead.append(self._pool.submit(self._work, self._submitted))
            self._submitted += 1

    def __iter__(self) -> Iterator[T]:
        self._fill()
        while self._ahead:
            result = self._ahead.popleft().result()
            self._fill()
            yield result

    def close(self) -> None:
        for future in self._ahead:
            future.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def lanes_running(work: Callable[[int], T], count: int, lanes: int) -> Iterator[Iterator[T]]:
    """``work(0)``, ... ``work(count - 1)`` in ``lanes`` lanes, each on its share of the cores
    (:func:`threads_per_lane`) for the block; yields their results in order. Leaving the block
    stops the lanes (each finishes its item) and restores torch's thread count."""
    with (
        torch_threads(threads_per_lane(lanes)),
        contextlib.closing(Lanes(work, count, lanes)) as running,
    ):
        yield iter(running)
