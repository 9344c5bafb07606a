"""A split's rows in public (FeatureStore.split_rows), and the in-store streamed logreg judges
a store's id order by the splits it reads, as StreamingLinearHead does: a store in id order
within train and within val, their ids interleaved, reads each train row once by id."""

from __future__ import annotations

import warnings

import numpy as np

from featpipe.heads.streamed_logreg import StreamingLogisticProbe
from featpipe.store import write_arrays


def _interleaved(path):
    """600 rows, 100 to an HDF5 chunk: train stored first with the even ids, val after it
    with the odd ones, each split in id order; every 50 ids hold 25 of each."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 4)).astype(np.float32)
    ids = [f"img{i:04d}" for i in range(0, 600, 2)] + [f"img{i:04d}" for i in range(1, 600, 2)]
    return write_arrays(path, {"pooled": X}, rng.integers(0, 2, 600), ["train"] * 300 + ["val"]
                        * 300, ["a", "b"], ids=ids, rows_per_chunk=100)  # fmt: skip


def test_split_rows_are_the_positions_of_a_splits_rows(tmp_path):
    store = _interleaved(tmp_path / "s.h5")
    assert np.array_equal(store.split_rows("train"), np.arange(300))
    assert np.array_equal(store.split_rows("val"), np.arange(300, 600))
    assert np.array_equal(store.split_rows(), np.arange(600))
    X, _ = store.arrays("pooled", "val")
    assert len(X) == len(store.split_rows("val"))


def test_the_streamed_logreg_does_not_warn_of_a_split_in_id_order(tmp_path):
    store = _interleaved(tmp_path / "s.h5")
    head = StreamingLogisticProbe(chunk_rows=50, max_iter=2, device="cpu", distributed=False)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        head.fit_store(store, "pooled", splits=("train",))
        head.fit_store(store, "pooled", splits=("train", "val"))
    assert not [w for w in record if "far from id order" in str(w.message)]
