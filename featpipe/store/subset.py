"""A feature store seen through a subset of its train rows (a data-size sweep)."""

from __future__ import annotations

from collections.abc import Collection
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

    def _keep(self, split: str | None) -> np.ndarray:
        """Which rows of ``store``'s split ``split`` this view keeps."""
        ids = self.store.ids(split)
        if split == "train":
            return np.array([sid in self.train_ids for sid in ids], dtype=bool)
        if split is None:
            train = set(self.store.ids("train"))
            return np.array([sid not in train or sid in self.train_ids for sid in ids], bool)
        return np.ones(len(ids), dtype=bool)

    def arrays(self, layer: str, split: str | None = None, **kw) -> tuple[np.ndarray, np.ndarray]:
        X, y = self.store.arrays(layer, split, **kw)
        keep = self._keep(split)
        return X[keep], y[keep]

    def labels(self, split: str | None = None) -> np.ndarray:
        return self.store.labels(split)[self._keep(split)]

    def ids(self, split: str | None = None) -> list[str]:
        ids = self.store.ids(split)
        return [sid for sid, k in zip(ids, self._keep(split), strict=True) if k]

    def split_counts(self) -> dict[str, int]:
        return {**self.store.split_counts(), "train": int(self._keep("train").sum())}
