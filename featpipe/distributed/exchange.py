"""Small messages between the processes of a torchrun job, through the key-value store
torchrun hosts (the TCPStore of :func:`featpipe.distributed.ranks.process_group`).

Not collectives: a process that waits here polls the store, so rank 0 may take as long as it
needs (scanning millions of files) without any collective timing out, and nothing waits for
processes that have already finished their share.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import pickle
import time
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from featpipe.distributed.ranks import process_group

T = TypeVar("T")
POLL_S = 0.2


@contextlib.contextmanager
def job_store(device: torch.device | str = "cpu") -> Iterator[dist.Store | None]:
    """The job's key-value store (None outside torchrun). Where torchrun's agent hosts it
    (``TORCHELASTIC_USE_AGENT_STORE``, the default), this process connects to it directly,
    with no process group: work that needs no collectives then needs no gloo mesh either,
    which an elastic restart must build again. Otherwise (or when a group is already up) it
    is the store of :func:`featpipe.distributed.ranks.process_group`."""
    hosted = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    if dist.is_initialized() or not hosted or "MASTER_PORT" not in os.environ:
        with process_group(device) as kv:
            yield kv
        return
    yield dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        is_master=False,
        timeout=dt.timedelta(seconds=1800),
    )


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
