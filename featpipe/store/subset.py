"""A feature store seen through a subset of its train rows (a data-size sweep)."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from typing import Any

import numpy as np

from featpipe.store.reader import FeatureStore


class TrainSubset:
    """``store`` with only the train rows whose sample id is in ``train_ids``; val and test
    rows, and everything else about the store, as they are. Reads like a FeatureStore in
    heads (``select_and_fit``, ``few_shot``)."""

    def __init__(self, store: FeatureStore, train_ids: Collection[str]):
        self.store = store
        self.train_ids = frozenset(train_ids)

    def __getattr__(self, name: str) -> Any:  # path, key, attrs, classes, layers, skipped, ...
        return getattr(self.store, name)

    def __len__(self) -> int:
        """Rows in the store's file, as ``len(store)``: the blocks of ``iter_chunks`` (and of
        the heads that stream from a store) are counted in stored rows."""
        return len(self.store)

    def _keep(self, split: str | None) -> np.ndarray:
        """Which rows of ``store``'s split ``split`` this view keeps."""
        ids = self.store.ids(split)
        if split == "train":
            return np.array([sid in self.train_ids for sid in ids], dtype=bool)
        if split is None:
            train = set(self.store.ids("train"))
            return np.array([sid not in train or sid in self.train_ids for sid in ids], bool)
        return np.ones(len(ids), dtype=bool)

    def arrays(
        self, layer: str, split: str | None = None, *, order: Sequence[int] | None = None, **kw
    ) -> tuple[np.ndarray, np.ndarray]:
        """The store's ``arrays`` of the rows kept (``order``: positions among them), read as
        such: the store's split is not loaded whole and then cut."""
        kept = np.flatnonzero(self._keep(split))
        return self.store.arrays(layer, split, order=kept if order is None else kept[order], **kw)

    def iter_chunks(
        self,
        layer: str,
        split: str | None = None,
        rows: int | None = None,
        *,
        allow_incomplete: bool = False,
        dtype: Any = np.float32,
        order: Sequence[int] | None = None,
        by_id: bool = False,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The store's ``iter_chunks`` (the same blocks, in the same ``order``, stored or
        ``by_id``) less the train rows outside the subset; a block left with no row is
        skipped, as the store skips one. Handed to the store as it is, it read every train
        row."""
        mask = self.store._row_mask(split, allow_incomplete)
        mask[mask] = self._keep(split)  # the split's rows, in stored order, as _keep lists them
        yield from self.store._chunks(layer, mask, rows, dtype, order, by_id)

    def to_pandas(self, layer: str, split: str | None = None, **kw):
        frame = self.store.to_pandas(layer, split, **kw)  # rows in the order of ids(split)
        return frame[self._keep(split)].reset_index(drop=True)

    def labels(self, split: str | None = None) -> np.ndarray:
        return self.store.labels(split)[self._keep(split)]

    def ids(self, split: str | None = None) -> list[str]:
        ids = self.store.ids(split)
        return [sid for sid, k in zip(ids, self._keep(split), strict=True) if k]

    def split_counts(self) -> dict[str, int]:
        return {**self.store.split_counts(), "train": int(self._keep("train").sum())}
