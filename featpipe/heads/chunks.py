"""Training rows read chunk by chunk, from arrays or from a store's splits, shared out among
the ranks of a torchrun job; and the statistics heads need before they train on them.

Heads that train on features larger than RAM (``streamed_logreg.py``, ``faiss_knn.py``) read
their rows through :class:`Chunks`. Under torchrun each rank reads the chunks ``rank::world``
(:meth:`Chunks.share`), and whatever must cover every row (the row count, the classes present,
the standardisation statistics) is combined across the ranks by :func:`row_statistics`.
"""

from __future__ import annotations

import atexit
import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from featpipe.distributed import Ranks, current_ranks, process_group, under_torchrun
from featpipe.errors import ConfigError
from featpipe.heads.preprocess import make_preprocessor, standard_scale
from featpipe.heads.splits import layer_parts
from featpipe.heads.streaming import ChunkReader, _array_chunks, warn_far_from_id_order


@dataclass(frozen=True)
class Chunks:
    """``n_chunks`` chunks of (X float32 (m, dim), y (m,)) rows; ``read(order)`` yields the
    chunks whose indices are in ``order``, in that order (an empty chunk may be skipped).
    ``labels``: every label value the rows can hold, sorted."""

    read: ChunkReader
    n_chunks: int
    dim: int
    labels: np.ndarray

    @classmethod
    def of_arrays(cls, X: np.ndarray, y: np.ndarray, rows: int) -> Chunks:
        return cls(_array_chunks(X, y, rows), math.ceil(len(X) / rows), X.shape[1], np.unique(y))

    @classmethod
    def of_store(cls, store, layer: str, splits: Sequence[str], rows: int) -> Chunks:
        """The rows of ``splits`` of one stored layer: block i of each split in turn, block i
        holding the split's rows whose ids rank from ``i*rows`` to ``(i+1)*rows`` among the
        file's, in id order (``iter_chunks(by_id=True)``: the same images listed in another
        order read alike; in a file in id order, stored rows ``i*rows`` to ``(i+1)*rows``),
        one iter_chunks call per split and pass."""
        if len(layer_parts(layer)) > 1:
            raise ConfigError(
                f"Heads that stream from a store read one stored layer; got {layer!r}. Stream "
                "one layer, or concatenate the layers into arrays and use an in-memory head."
            )
        for split in splits:  # each is read by id on its own: judged as iter_chunks reads it
            warn_far_from_id_order(store, rows, split)
        per_split = math.ceil(len(store) / rows)

        def read(order: Sequence[int]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
            run: list[int] = []  # consecutive indices in one split: one iter_chunks call
            for i in [*order, None]:
                if run and (i is None or i // per_split != run[0] // per_split):
                    split = splits[run[0] // per_split]
                    blocks = [j % per_split for j in run]
                    yield from store.iter_chunks(layer, split, rows=rows, order=blocks, by_id=True)
                    run = []
                if i is not None:
                    run.append(i)

        dim = store.layer_info(layer)["dim"]
        return cls(read, per_split * len(splits), dim, np.arange(len(store.classes)))

    def share(self, ranks: Ranks) -> list[int]:
        """The chunks one rank reads: ``rank::world_size``, every chunk for a single process."""
        return list(range(ranks.rank, self.n_chunks, ranks.world_size))


_HELD_GROUP = contextlib.ExitStack()


def job_ranks(distributed: bool) -> Ranks:
    """The ranks a streamed fit shares its passes with: under torchrun (and ``distributed``)
    the job's, with its gloo group joined on first use and held until the process exits, so
    that fit after fit reuses it (a group torn down and made again from the same rendezvous
    can find the previous one's addresses and fail to connect); otherwise rank 0 of 1."""
    if not (distributed and under_torchrun()):
        return Ranks()
    if not dist.is_initialized():
        _HELD_GROUP.enter_context(process_group("cpu"))
        atexit.register(_HELD_GROUP.close)
    return current_ranks()


@dataclass(frozen=True)
class RowStatistics:
    """Over every rank's rows: the count, the label values present (sorted), and the
    features' mean and variance (None when not asked for); and the most rows of one chunk
    this rank read (the rows of its largest matrix product)."""

    n: int
    classes: np.ndarray
    mean: np.ndarray | None
    var: np.ndarray | None
    # Not gathered: it sets this rank's torch threads, so ranks may pick different counts.
    # Harmless: the ranks' gradients and losses are all-reduced, so every rank takes the same
    # step whatever each one's threads (they change only its speed and last bits).
    chunk_rows: int


def row_statistics(chunks: Chunks, ranks: Ranks, moments: bool) -> RowStatistics:
    """One pass over this rank's share of ``chunks``; the figures are combined across the
    ranks (an all-gather of one small vector per rank), so every rank gets the same."""
    present = np.zeros(len(chunks.labels), dtype=bool)
    scaler, n, most = StandardScaler(), 0, 0
    for X, y in chunks.read(chunks.share(ranks)):
        if len(y):
            n, most = n + len(y), max(most, len(y))
            present[np.searchsorted(chunks.labels, np.unique(y))] = True
            if moments:
                scaler.partial_fit(X)  # float64 accumulators, as StandardScaler.fit
    dim = chunks.dim
    mine = np.concatenate(
        [
            [n],
            present,
            scaler.mean_ if n and moments else np.zeros(dim),
            scaler.var_ if n and moments else np.zeros(dim),
        ]
    )
    gathered = _all_gather(mine, ranks)
    counts = gathered[:, 0]
    total = int(counts.sum())
    if total == 0:
        raise ConfigError("The training rows are empty; nothing to fit.")
    classes = chunks.labels[gathered[:, 1 : 1 + len(present)].any(axis=0)]
    if not moments:
        return RowStatistics(total, classes, None, None, most)
    means = gathered[:, 1 + len(present) : 1 + len(present) + dim]
    variances = gathered[:, 1 + len(present) + dim :]
    mean, var, seen = np.zeros(dim), np.zeros(dim), 0
    for count, m, v in zip(counts, means, variances, strict=True):  # Chan et al., rank order
        if count:
            delta = m - mean
            var = (seen * var + count * v + delta**2 * seen * count / (seen + count)) / (
                seen + count
            )
            mean = mean + delta * count / (seen + count)
            seen += count
    return RowStatistics(total, classes, mean, var, most)


def _all_gather(vector: np.ndarray, ranks: Ranks) -> np.ndarray:
    """(world_size, len) of every rank's ``vector``, in rank order (gloo, on CPU)."""
    if not ranks.distributed:
        return vector[None, :].astype(np.float64)
    mine = torch.as_tensor(vector, dtype=torch.float64)
    out = [torch.empty_like(mine) for _ in range(ranks.world_size)]
    dist.all_gather(out, mine)
    return torch.stack(out).numpy()


def all_reduce_sum(values: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """The sum over the ranks of ``values`` (every rank gets the same), through gloo on CPU."""
    if not ranks.distributed:
        return values
    total = values.detach().to("cpu", torch.float64, copy=True)
    dist.all_reduce(total)
    return total.to(values.device)


def fitted_preprocessor(preprocess: str, pca: int | None, stats: RowStatistics, dim: int):
    """The preprocessing step of the in-memory heads (``make_preprocessor``), fitted from
    streamed statistics: StandardScaler's mean and scale, or the stateless L2 / identity."""
    if pca is not None:
        raise ConfigError(
            f"Heads that stream their rows cannot apply PCA (pca={pca}): it needs every row at "
            "once. Use pca=None, or reduce the features before storing them."
        )
    pipeline: Pipeline = make_preprocessor(preprocess, None)
    step = pipeline.steps[0][1]
    if isinstance(step, StandardScaler):
        step.mean_, step.var_, step.n_samples_seen_ = stats.mean, stats.var, stats.n
        step.scale_ = standard_scale(stats.mean, stats.var, stats.n)
        step.n_features_in_ = dim
    else:  # stateless: fitting only records the width
        step.fit(np.zeros((1, dim), np.float32))
    return pipeline
