"""``FeatureSplits.fit_rows`` reads a store's split in the order of its ids
(``FeatureStore.arrays(order=...)``, each block put in place as it is read) instead of loading
it as stored and permuting a copy: the same rows as before, the split held once."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import listed_store

from featpipe.data.splits import id_order
from featpipe.errors import ConfigError
from featpipe.heads.splits import FeatureSplits
from featpipe.store import FeatureStore
from featpipe.store.subset import TrainSubset

N, ROWS_PER_CHUNK = 300, 16  # several stored chunks, and several read blocks of 8 chunks
SORTED = np.arange(N)
SHUFFLED = np.random.default_rng(3).permutation(N)


def _store(path, order: np.ndarray) -> FeatureStore:
    """The same 300 images of 3 classes (ids s0000..s0299), their splits interleaved (train,
    val and test by a seeded draw), written in ``order``."""
    rng = np.random.default_rng(0)
    y = np.arange(N) % 3
    X = {
        "pooled": (np.eye(3, 8)[y] * 2 + rng.normal(size=(N, 8))).astype(np.float32),
        "blocks.1:avg": rng.normal(size=(N, 5)).astype(np.float32) * 7 + 3,
    }
    splits = rng.choice(np.array([0, 1, 2], dtype=np.uint8), size=N, p=[0.6, 0.2, 0.2])
    ids = np.array([f"s{i:04d}" for i in range(N)])
    return listed_store(path, order, X, y, splits, ids, ROWS_PER_CHUNK)


@pytest.fixture
def stores(tmp_path) -> tuple[FeatureStore, FeatureStore]:
    return _store(tmp_path / "sorted.h5", SORTED), _store(tmp_path / "shuffled.h5", SHUFFLED)


# -- fit_rows: the split read in id order ------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_fit_rows_are_the_split_permuted_to_id_order_as_before(stores, split):
    for store in stores:
        X, y = store.arrays("pooled", split)
        order = id_order(store.ids(split), len(y))
        X_fit, y_fit = FeatureSplits(store, "pooled").fit_rows(split)
        np.testing.assert_array_equal(X_fit, X[order])  # the old fit_rows: a permuted copy
        np.testing.assert_array_equal(y_fit, y[order])
    a, b = (FeatureSplits(s, "pooled").fit_rows(split) for s in stores)
    np.testing.assert_array_equal(a[0], b[0])


def test_a_joined_layer_fits_the_same_rows_and_scaling_in_either_listing(stores):
    a, b = (FeatureSplits(s, "pooled+blocks.1:avg") for s in stores)
    for split in ("train", "val"):
        np.testing.assert_array_equal(a.fit_rows(split)[0], b.fit_rows(split)[0])


def test_arrays_in_an_order_reads_those_rows_only(stores):
    store = stores[1]
    X, y = store.arrays("pooled", "train")
    picked = [5, 170, 0, 31, 90]
    X_o, y_o = store.arrays("pooled", "train", order=picked)
    np.testing.assert_array_equal(X_o, X[picked])
    np.testing.assert_array_equal(y_o, y[picked])


@pytest.mark.parametrize("order", [[0, 3, 3], [0, -1], [10_000]], ids=["repeat", "neg", "past"])
def test_arrays_refuses_an_order_that_is_not_distinct_positions_of_the_split(stores, order):
    with pytest.raises(ConfigError, match="distinct positions among the split's"):
        stores[0].arrays("pooled", "val", order=order)


def test_a_train_subset_reads_its_rows_alone_in_any_order(stores):
    store = stores[1]
    kept = store.ids("train")[::3]
    subset = TrainSubset(store, kept)
    X, y = store.arrays("pooled", "train")
    keep = np.isin(store.ids("train"), kept)
    np.testing.assert_array_equal(subset.arrays("pooled", "train")[0], X[keep])
    np.testing.assert_array_equal(
        subset.arrays("pooled", "val")[0], store.arrays("pooled", "val")[0]
    )
    order = id_order(subset.ids("train"), int(keep.sum()))
    np.testing.assert_array_equal(
        FeatureSplits(subset, "pooled").fit_rows("train")[1], y[keep][order]
    )
