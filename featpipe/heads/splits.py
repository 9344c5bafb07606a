"""One way for heads to read train/val/test features: from a FeatureStore or from arrays.

Reads are lazy and per split, so code that chooses hyper-parameters can be checked (and is
written) to never touch the test split before its final refit.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from featpipe.data.splits import id_order
from featpipe.errors import ConfigError
from featpipe.heads.finite import check_finite
from featpipe.heads.preprocess import standard_scale

SplitArrays = Mapping[str, tuple[np.ndarray, np.ndarray]]
# ``pooled+blocks.5:avg``: several stored layers read as one, side by side.
LAYER_JOIN = "+"


def layer_parts(layer: str) -> list[str]:
    """The stored layers a (possibly concatenated) layer name reads; a ConfigError for an
    empty or repeated part (one layer twice side by side is a name that says two)."""
    parts = [part.strip() for part in layer.split(LAYER_JOIN)]
    if len(parts) > 1:
        problem = "joins an empty name" if "" in parts else None
        repeated = [p for i, p in enumerate(parts) if p in parts[:i]]
        problem = problem or (f"names {repeated[0]!r} more than once" if repeated else None)
        if problem:
            raise ConfigError(
                f"layer {layer!r} {problem}: join different stored layers with "
                f"{LAYER_JOIN!r}, e.g. pooled{LAYER_JOIN}blocks.5:avg."
            )
    return parts


def block_stats(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of one layer's train rows, in float64, the deviation 1
    where the feature is constant up to rounding, as StandardScaler's: a constant float32
    column's mean was an ulp off, its deviation 1e-8, and test rows 1e-4 away read as 10^4."""
    train = np.asarray(train, np.float64)
    mean, var = train.mean(axis=0), train.var(axis=0)
    return mean, standard_scale(mean, var, len(train))


def concatenated(blocks: list[np.ndarray], stats: list[tuple[np.ndarray, np.ndarray]]):
    """``blocks`` side by side, each standardised by its own layer's train ``stats``, so that
    no layer dominates the others by its scale."""
    out = [(X - mean) / std for X, (mean, std) in zip(blocks, stats, strict=True)]
    return np.concatenate(out, axis=1).astype(np.float32)


class FeatureSplits:
    """Per-split (X, y) of one layer. ``source`` is a FeatureStore or a mapping
    ``{"train": (X, y), "val": ..., "test": ...}``. Anything else read as a store needs
    ``arrays(layer, split, order=None)`` (``order``: the positions of the split's rows to
    return, in that order, as :meth:`FeatureStore.arrays` takes them), ``ids(split)`` (in the
    order of ``arrays``' rows), ``split_counts()``, ``classes`` and ``layers``: heads fit on
    rows read in id order (:meth:`fit_rows`).

    A store's layer may join several stored layers with ``+`` (``pooled+blocks.5:avg``): their
    features are concatenated, each block standardised on its own with train-split statistics.
    """

    def __init__(self, source: object, layer: str | None = None):
        self.source = source
        self.layer = layer
        self._stats = None  # per-layer train statistics of a concatenated layer
        self.is_store = hasattr(source, "arrays") and hasattr(source, "split_counts")
        if self.is_store and layer is None:
            raise ConfigError(
                f"Name the feature layer to read; this store has: {', '.join(source.layers)}."
            )
        if self.is_store:
            layer_parts(layer)  # refuses an empty or repeated part before anything is read
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
            return self._read(split, None)
        X, y = self.source[split]
        X, y = np.asarray(X, dtype=np.float32), np.asarray(y)
        self._check_shapes(split, X, y)
        check_finite(X, split)  # a store's reads check their own
        return X, y

    def fit_rows(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`get`, a store's rows in the order of their ids (arrays keep theirs): heads
        fit on these, so that their draws (a subsample, CV folds, few-shot rows) keep the same
        images when the source lists them in another order. The store reads them in that
        order (``arrays(order=...)``), so memory holds the split once, as :meth:`get`. The
        head's own fit (an SVM's subsample, an MLP's batches, a solver's sums) depends on row
        order too, so the rows are permuted rather than the draws handed an order."""
        if not self.is_store:
            return self.get(split)
        return self._read(split, self._id_order(split))

    def _id_order(self, split: str) -> np.ndarray:
        ids = self.source.ids(split)
        return id_order(ids, len(ids))

    def _read(self, split: str, order: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """A store's (X, y) of one split, its rows at positions ``order`` (None: as stored)."""
        kw = {} if order is None else {"order": order}
        parts = layer_parts(self.layer)
        if len(parts) == 1:
            return self.source.arrays(self.layer, split, **kw)
        if self._stats is None:  # from train in id order: the same sums for any listing
            train = self._id_order("train")
            self._stats = [
                block_stats(self.source.arrays(part, "train", order=train)[0]) for part in parts
            ]
        blocks = [self.source.arrays(part, split, **kw) for part in parts]
        return concatenated([X for X, _ in blocks], self._stats), blocks[0][1]

    def _check_shapes(self, split: str, X: np.ndarray, y: np.ndarray) -> None:
        """Refuse a split's arrays that are not X (n, D) and y (n,), D that of train: the heads
        failed on them deep inside (torch's 'size of tensor a (6) must match ... b (5)' for
        fewer val labels than rows, 'unhashable type: list' for y of shape (n, 1))."""
        width = np.shape(self.source["train"][0])[1:] if split != "train" else X.shape[1:]
        if X.ndim == 2 and y.ndim == 1 and len(X) == len(y) and X.shape[1:] == width:
            return
        want = f"(n, {width[0]})" if X.ndim == 2 and len(width) == 1 else "(n, D)"
        raise ConfigError(
            f"The {split!r} arrays are X of shape {X.shape} and y of shape {y.shape}; a head "
            f"needs X {want}, the train split's width, and y (n,), one label per row. "
            "Reshape them (X.reshape(len(X), -1), y.ravel())."
        )

    def ids(self, split: str) -> list[str] | None:
        return list(self.source.ids(split)) if self.is_store else None

    def class_name(self, label: object) -> str:
        names = self.classes
        return str(names[int(label)]) if names is not None else str(label)
