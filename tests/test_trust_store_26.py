"""The streamed heads judge a store's id order by the split they read: a store in id order
within each split reads each row once by id, even where the splits' ids interleave."""

from __future__ import annotations

import warnings

import numpy as np

from featpipe.heads.streaming import StreamingLinearHead, by_id_read_cost
from featpipe.store import write_arrays


def _interleaved(path):
    """600 rows, 100 to an HDF5 chunk: train stored first with the even ids, val after it
    with the odd ones, each split in id order; every 50 ids hold 25 of each."""
    X = np.random.default_rng(0).normal(size=(600, 4)).astype(np.float32)
    ids = [f"img{i:04d}" for i in range(0, 600, 2)] + [f"img{i:04d}" for i in range(1, 600, 2)]
    return write_arrays(path, {"pooled": X}, np.arange(600) % 2, ["train"] * 300 + ["val"] * 300,
                        ["a", "b"], ids=ids, rows_per_chunk=100)  # fmt: skip


def test_a_split_in_id_order_reads_once_by_id(tmp_path):
    store = _interleaved(tmp_path / "s.h5")
    assert by_id_read_cost(store, 50) >= 4  # the whole file: each 50 ids from two places
    assert by_id_read_cost(store, 50, "train") == 1.0  # train's 25: one stored run
    assert by_id_read_cost(store, 50, "val") == 1.0
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        StreamingLinearHead(chunk_rows=50, epochs=1).fit_store(store, "pooled")
    assert not [w for w in record if "far from id order" in str(w.message)]


def test_a_split_sprinkled_through_a_store_in_id_order_is_not_far(tmp_path):
    # Val every 10th row: read by id or in stored order, a pass gathers it from every chunk.
    X = np.zeros((600, 2), np.float32)
    splits = ["val" if i % 10 == 0 else "train" for i in range(600)]
    store = write_arrays(tmp_path / "s.h5", {"pooled": X}, np.arange(600) % 2, splits, ["a", "b"],
                         ids=[f"img{i:04d}" for i in range(600)], rows_per_chunk=100)  # fmt: skip
    assert by_id_read_cost(store, 100, "val") == 1.0
    assert by_id_read_cost(store, 100, "train") == 1.0
