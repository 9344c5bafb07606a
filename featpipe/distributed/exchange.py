"""Small messages between the processes of a torchrun job, through the key-value store
torchrun hosts (the TCPStore of :func:`featpipe.distributed.ranks.process_group`).

Not collectives: a process that waits here polls the store, so rank 0 may take as long as it
needs (scanning millions of files) without any collective timing out, and nothing waits for
processes that have already finished their share.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import torch.distributed as dist

T = TypeVar("T")
POLL_S = 0.2


def publish(kv: dist.Store, key: str, value: Any) -> None:
    """Make ``value`` (picklable) readable by every process under ``key``."""
    kv.set(key, pickle.dumps(value))


def receive(kv: dist.Store, key: str, poll_s: float = POLL_S) -> Any:
    """The value published under ``key``, waiting for it as long as it takes (torchrun stops
    this process if the one that should publish it dies)."""
    while not kv.check([key]):
        time.sleep(poll_s)
    return pickle.loads(kv.get(key))


def claims(kv: dist.Store, key: str, items: Sequence[T]) -> Iterator[T]:
    """The items this process claims, one at a time, from a counter every process of the job
    shares: each item goes to exactly one process, and fast processes take more."""
    while True:
        index = int(kv.add(key, 1)) - 1
        if index >= len(items):
            return
        yield items[index]
