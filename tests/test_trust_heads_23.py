"""Streamed heads' id-order warning: under torchrun rank 0 alone says it (every rank reads the
same store); the estimate reads the store's id order through its public name,
``FeatureStore.id_positions``, which a TrainSubset passes on."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from featpipe.heads.streaming import StreamingLinearHead, by_id_read_cost
from featpipe.store import TrainSubset, write_arrays

TORCHRUN_ENV = {
    "WORLD_SIZE": "2",
    "LOCAL_RANK": "0",
    "LOCAL_WORLD_SIZE": "2",
    "MASTER_ADDR": "127.0.0.1",
    "MASTER_PORT": "29500",
}


def _shuffled_store(path):
    """600 train rows of 8 features, 100 rows to an HDF5 chunk, listed in random id order."""
    rng = np.random.default_rng(3)
    order = rng.permutation(600)
    X = rng.normal(size=(600, 8)).astype(np.float32)
    ids = [f"img{i:04d}" for i in order]
    return write_arrays(path, {"pooled": X}, order % 3, ["train"] * 600, list("abc"), ids=ids,
                        rows_per_chunk=100)  # fmt: skip


def _far_warnings(rank: int, monkeypatch, store) -> list[str]:
    for name, value in {**TORCHRUN_ENV, "RANK": str(rank)}.items():
        monkeypatch.setenv(name, value)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        StreamingLinearHead(chunk_rows=100, epochs=1).fit_store(store, "pooled")
    return [str(w.message) for w in record if "far from id order" in str(w.message)]


def test_only_rank_0_warns_of_a_store_far_from_id_order(tmp_path, monkeypatch):
    # Each rank a process of its own: the store files differ, so neither is "already warned".
    assert _far_warnings(1, monkeypatch, _shuffled_store(tmp_path / "rank1.h5")) == []
    (message,) = _far_warnings(0, monkeypatch, _shuffled_store(tmp_path / "rank0.h5"))
    assert "about 6 times its rows" in message


@pytest.mark.parametrize("order", ["in id order", "reversed"])
def test_id_positions_is_the_stored_rows_in_id_order(tmp_path, order):
    ids = [f"img{i:02d}" for i in range(12)]
    if order == "reversed":
        ids = ids[::-1]
    splits = ["train"] * 8 + ["test"] * 4
    store = write_arrays(tmp_path / "s.h5", {"pooled": np.zeros((12, 2))}, [0] * 12, splits,
                         ["a"], ids=ids, rows_per_chunk=4)  # fmt: skip
    positions = store.id_positions()
    assert [ids[p] for p in positions] == sorted(ids)
    # A TrainSubset reads by id over the whole file, so it gives the file's order.
    subset = TrainSubset(store, ids[:3])
    assert np.array_equal(subset.id_positions(), positions)
    assert by_id_read_cost(subset, 4) == 1.0  # each 4 ids within one HDF5 chunk of 4
