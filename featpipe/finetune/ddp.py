"""Data-parallel fine-tuning under torchrun: the pieces ``FineTuner`` uses when a process
group is up (one model replica per rank, ``DistributedDataParallel`` averaging gradients).

- ``batch_size`` stays the global batch: each rank trains on ``batch_size / world`` images
  per step, drawn by a ``DistributedSampler(drop_last=True)`` (every rank takes the same
  number of steps, so no collective waits on a rank that ran out of data).
- Evaluation is exact: rank r scores rows ``rows[r::world]`` (no padding, so no image is
  counted twice), then (row position, probabilities) are gathered and put back in row order;
  metrics are computed once, on rank 0, and what follows from them is broadcast.
- Training randomness is drawn per rank from (seed, epoch, rank) (dropout, worker seeds) or
  per image from (seed, epoch, row) (augmentation, see ``SourceDataset``), so a resumed run
  repeats the epochs it lost without saving every rank's random state.

Outside a process group every function here is the single-process identity, so the tuner
calls them unconditionally.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler

from featpipe.device import torch_threads
from featpipe.distributed import process_group
from featpipe.errors import ConfigError

CONTROL = torch.device("cpu")  # small gathers and broadcasts take gloo, also beside NCCL


def active() -> bool:
    """Whether a process group is up: the tuner then trains one replica per rank."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0 writes checkpoints and prints; the others train and evaluate beside it."""
    return rank() == 0


@contextlib.contextmanager
def joined(device: torch.device) -> Iterator[None]:
    """Inside: the torchrun job's process group (made here if the caller has none, e.g. a
    script calling ``fit``) and, on the CPU, torch threads shared among this machine's ranks
    (``available_cores``). Outside torchrun: nothing changes."""
    with process_group(device):
        if active() and device.type == "cpu":
            with torch_threads():
                yield
        else:
            yield


def per_rank_batch(batch_size: int, world: int) -> int:
    """Each rank's share of the global ``batch_size``; refuses a batch the ranks cannot share
    evenly (a silently rounded batch would change the recipe)."""
    if batch_size % world:
        lower = max(world, batch_size // world * world)
        raise ConfigError(
            f"batch_size {batch_size} is the global batch, shared by {world} ranks, and does "
            f"not divide evenly among them. Use a multiple of {world} (e.g. {lower} or "
            f"{lower + world}), or run on a number of ranks that divides {batch_size}."
        )
    return batch_size // world


def train_sampler(dataset: Dataset, seed: int) -> DistributedSampler | None:
    """This rank's shuffled share of the training rows (None: a single process shuffles all).
    ``drop_last``: every rank gets the same number of rows and no row is repeated."""
    if not active():
        return None
    return DistributedSampler(
        dataset, num_replicas=world_size(), rank=rank(), shuffle=True, seed=seed, drop_last=True
    )


def seed_epoch(seed: int, epoch: int, generator: torch.Generator) -> None:
    """Seed this rank's training randomness for ``epoch`` from (seed, epoch, rank): ranks draw
    different dropout masks, and a resumed epoch draws the same ones again."""
    entropy = np.random.SeedSequence([seed, epoch, rank()]).generate_state(2, np.uint64)
    value = int(entropy[0]) >> 1
    torch.manual_seed(value)  # CPU and every CUDA device
    generator.manual_seed(value)
    np.random.seed(int(entropy[1]) % 2**32)
    random.seed(int(entropy[1]))


def convert_sync_bn(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` with every batch norm layer a ``SyncBatchNorm`` (statistics over the global
    batch). Same parameters and state-dict keys, so checkpoints stay interchangeable."""
    if device.type != "cuda":
        raise ConfigError(
            f"sync_bn=True synchronises batch norm across GPUs, and torch's SyncBatchNorm runs "
            f"only on them; this run trains on {device}. Leave sync_bn off on the CPU."
        )
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """The module training steps run through: ``DistributedDataParallel`` over ``model``
    (rank 0's weights and buffers are broadcast to all on construction), or ``model``
    itself outside a process group. Checkpoints and predictions use ``model``, never the
    wrapper, so state dicts never carry DDP's ``module.`` prefix."""
    if not active():
        return model
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def all_sum(values: torch.Tensor) -> torch.Tensor:
    """``values`` summed over the ranks, in place (one collective, on their device)."""
    if active():
        dist.all_reduce(values)
    return values


def my_rows(rows: np.ndarray) -> np.ndarray:
    """This rank's share of ``rows`` for evaluation: ``rows[rank::world]``, unpadded."""
    return rows[rank() :: world_size()]


def gather_rows(mine: np.ndarray, n: int, everywhere: bool = True) -> np.ndarray | None:
    """The (n, C) results of every rank in row order, from each rank's ``mine`` (its results
    for ``my_rows`` of n rows). ``everywhere=False``: only rank 0 gets them (others: None).

    Each rank sends its row positions beside its values, padded to the longest share with
    position -1 (the true length), so reassembly needs no assumption about who scored what."""
    if not active():
        return mine
    world = world_size()
    width = -(-n // world)
    positions = torch.full((width,), -1, dtype=torch.int64)
    values = torch.zeros((width, *mine.shape[1:]), dtype=torch.from_numpy(mine).dtype)
    mine_at = torch.arange(rank(), n, world)
    positions[: len(mine_at)] = mine_at
    values[: len(mine)] = torch.from_numpy(mine)
    if everywhere:
        all_positions = [torch.empty_like(positions) for _ in range(world)]
        all_values = [torch.empty_like(values) for _ in range(world)]
        dist.all_gather(all_positions, positions)
        dist.all_gather(all_values, values)
    else:
        main = is_main()
        all_positions = [torch.empty_like(positions) for _ in range(world)] if main else None
        all_values = [torch.empty_like(values) for _ in range(world)] if main else None
        dist.gather(positions, all_positions, dst=0)
        dist.gather(values, all_values, dst=0)
        if not main:
            return None
    return assemble([p.numpy() for p in all_positions], [v.numpy() for v in all_values], n)


def assemble(positions: list[np.ndarray], values: list[np.ndarray], n: int) -> np.ndarray:
    """Rows ``values[r][i]`` put at ``positions[r][i]`` (padding: position -1 is skipped);
    every position 0..n-1 must come exactly once."""
    out = np.empty((n, *values[0].shape[1:]), dtype=values[0].dtype)
    seen = np.zeros(n, dtype=np.int64)
    for where, rows in zip(positions, values, strict=True):
        real = where >= 0
        out[where[real]] = rows[real]
        np.add.at(seen, where[real], 1)
    if not (seen == 1).all():
        raise RuntimeError(
            f"gathered evaluation rows do not cover 0..{n - 1} exactly once "
            f"(missing {np.flatnonzero(seen == 0)[:5]}, repeated {np.flatnonzero(seen > 1)[:5]})"
        )
    return out


def from_main(value):
    """Rank 0's ``value`` on every rank (anything picklable): its metrics and decisions."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, device=CONTROL)
    return box[0]


def share_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (batch-norm running statistics) on every rank. DDP broadcasts them
    before each training step, but each rank's last step updates them with its own batch:
    after an epoch they differ, and evaluation and checkpoints must see one model."""
    if not active():
        return
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)
