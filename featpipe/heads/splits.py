"""One way for heads to read train/val/test features: from a FeatureStore or from arrays.

Reads are lazy and per split, so code that chooses hyper-parameters can be checked (and is
written) to never touch the test split before its final refit.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from featpipe.errors import ConfigError

SplitArrays = Mapping[str, tuple[np.ndarray, np.ndarray]]


class FeatureSplits:
    """Per-split (X, y) of one layer. ``source`` is a FeatureStore (anything with ``arrays``,
    ``split_counts`` and ``classes``) or a mapping ``{"train": (X, y), "val": ..., "test": ...}``.
    """

    def __init__(self, source: object, layer: str | None = None):
        self.source = source
        self.layer = layer
        self.is_store = hasattr(source, "arrays") and hasattr(source, "split_counts")
        if self.is_store and layer is None:
            raise ConfigError(
                f"Name the feature layer to read; this store has: {', '.join(source.layers)}."
            )
        if not self.is_store and not isinstance(source, Mapping):
            raise ConfigError(
                "Expected a FeatureStore or a mapping of split name -> (X, y); got "
                f"{type(source).__name__}."
            )
        if not self.is_store and "train" not in source:
            raise ConfigError(f"The arrays need a 'train' split; got splits {sorted(source)}.")

    @property
    def classes(self) -> list[str] | None:
        """Class names when the source has them (a store does; arrays do not)."""
        return list(self.source.classes) if self.is_store else None

    def has(self, split: str) -> bool:
        """Whether the split holds any rows (reads no features or labels)."""
        if self.is_store:
            return self.source.split_counts().get(split, 0) > 0
        return split in self.source and len(self.source[split][1]) > 0

    def get(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(X float32 (n, D), y (n,)) of one split."""
        if self.is_store:
            return self.source.arrays(self.layer, split)
        X, y = self.source[split]
        return np.asarray(X, dtype=np.float32), np.asarray(y)

    def ids(self, split: str) -> list[str] | None:
        return list(self.source.ids(split)) if self.is_store else None

    def class_name(self, label: object) -> str:
        names = self.classes
        return str(names[int(label)]) if names is not None else str(label)
