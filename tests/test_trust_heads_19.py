"""Streamed heads take a store's rows by id (``iter_chunks(by_id=True)``), as every other head
does (``data.splits.id_order``): the same images listed in another order train bit-identical
coefficients, a store already in id order trains the coefficients it trained before, and the
reads stay ``rows`` stored rows at a time."""

from __future__ import annotations

import math

import numpy as np
import pytest

from featpipe.heads import StreamingLinearHead
from featpipe.heads.chunks import Chunks
from featpipe.heads.streamed_logreg import StreamingLogisticProbe
from featpipe.store import FeatureStore, write_arrays
from featpipe.store.subset import TrainSubset

N, ROWS = 300, 24
SPLITS = np.random.default_rng(0).choice(np.array(["train", "val", "test"]), N, p=[0.6, 0.2, 0.2])


def _store(path, order: np.ndarray) -> FeatureStore:
    """The same 300 images of 3 classes (ids s0000..s0299, splits interleaved), listed in
    ``order``."""
    rng = np.random.default_rng(1)
    y = np.arange(N) % 3
    X = (np.eye(3, 8)[y] * 2 + rng.normal(size=(N, 8)) * 3 + 5).astype(np.float32)
    ids = np.array([f"s{i:04d}" for i in range(N)])
    return write_arrays(
        path, {"pooled": X[order]}, y[order], SPLITS[order], ["a", "b", "c"], ids=list(ids[order])
    )


@pytest.fixture
def stores(tmp_path) -> tuple[FeatureStore, FeatureStore]:
    """One store in id order, one with the same rows shuffled."""
    shuffled = np.random.default_rng(3).permutation(N)
    return _store(tmp_path / "sorted.h5", np.arange(N)), _store(tmp_path / "shuffled.h5", shuffled)


def _blocks(store, split: str, **kw) -> list[tuple[np.ndarray, np.ndarray]]:
    return list(store.iter_chunks("pooled", split, rows=ROWS, **kw))


def _assert_same_blocks(a, b) -> None:
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


@pytest.mark.parametrize("split", ["train", "test", None])
def test_a_store_in_id_order_reads_by_id_as_stored(stores, split):
    store = stores[0]
    _assert_same_blocks(_blocks(store, split, by_id=True), _blocks(store, split))
    order = [5, 0, 11, 3]
    _assert_same_blocks(
        _blocks(store, split, by_id=True, order=order), _blocks(store, split, order=order)
    )


@pytest.mark.parametrize("split", ["train", "val"])
def test_another_listing_reads_the_same_blocks_by_id_in_id_order(stores, split):
    a, b = (_blocks(s, split, by_id=True) for s in stores)
    _assert_same_blocks(a, b)
    assert max(len(y) for _, y in b) <= ROWS
    # every row of the split once, in id order
    X = np.concatenate([x for x, _ in b])
    ids = np.array(stores[1].ids(split))
    want, _ = stores[1].arrays("pooled", split, order=np.argsort(ids, kind="stable"))
    np.testing.assert_array_equal(X, want)


def test_by_id_reads_at_most_rows_stored_rows_at_a_time(stores, monkeypatch):
    spans = []
    real = FeatureStore.read_rows
    monkeypatch.setattr(
        FeatureStore,
        "read_rows",
        lambda self, ds, layer, start, stop: (
            spans.append(stop - start) or real(self, ds, layer, start, stop)
        ),
    )
    blocks = _blocks(stores[1], "train", by_id=True)
    assert len(blocks) > 5 and spans and max(spans) <= ROWS


def _sgd() -> StreamingLinearHead:
    return StreamingLinearHead(chunk_rows=ROWS, buffer_chunks=2, epochs=3, random_state=1)


def test_the_same_images_listed_in_another_order_train_the_same_sgd_head(stores):
    a, b = (_sgd().fit_store(s, "pooled") for s in stores)
    np.testing.assert_array_equal(a.scaler_.mean_, b.scaler_.mean_)
    np.testing.assert_array_equal(a.classifier_.coef_, b.classifier_.coef_)
    np.testing.assert_array_equal(a.classifier_.intercept_, b.classifier_.intercept_)


def _stored_blocks(store, split: str):
    """The streamed heads' reader before they read by id: block i, stored rows i*ROWS on."""
    return lambda order: store.iter_chunks("pooled", split, rows=ROWS, order=order)


def test_a_store_in_id_order_trains_the_sgd_head_it_trained_before(stores):
    store = stores[0]
    new = _sgd().fit_store(store, "pooled")
    old = _sgd().fit_chunks(_stored_blocks(store, "train"), math.ceil(N / ROWS))
    np.testing.assert_array_equal(new.classifier_.coef_, old.classifier_.coef_)
    np.testing.assert_array_equal(new.classifier_.intercept_, old.classifier_.intercept_)


def _logreg() -> StreamingLogisticProbe:
    return StreamingLogisticProbe(chunk_rows=ROWS, device="cpu", distributed=False)


def test_the_same_images_listed_in_another_order_train_the_same_streamed_logreg(stores):
    a, b = (_logreg().fit_store(s, "pooled", ["train", "val"]) for s in stores)
    np.testing.assert_array_equal(a.classifier_.coef_, b.classifier_.coef_)
    np.testing.assert_array_equal(a.classifier_.intercept_, b.classifier_.intercept_)


def test_a_store_in_id_order_trains_the_streamed_logreg_it_trained_before(stores):
    store = stores[0]
    new = _logreg().fit_store(store, "pooled", ["train", "val"])
    per_split = math.ceil(N / ROWS)

    def old_read(order):  # Chunks.of_store before: block i of each split, stored rows
        for i in order:
            yield from _stored_blocks(store, ["train", "val"][i // per_split])([i % per_split])

    old = _logreg()._fit(Chunks(old_read, 2 * per_split, 8, np.arange(3)))
    np.testing.assert_array_equal(new.classifier_.coef_, old.classifier_.coef_)
    np.testing.assert_array_equal(new.classifier_.intercept_, old.classifier_.intercept_)


def test_a_train_subset_streams_as_before_and_alike_in_either_listing(stores):
    kept = stores[0].ids("train")[1::2]
    sorted_, shuffled = (TrainSubset(s, kept) for s in stores)
    new = _sgd().fit_store(sorted_, "pooled")
    old = _sgd().fit_chunks(_stored_blocks(sorted_, "train"), math.ceil(N / ROWS))
    np.testing.assert_array_equal(new.classifier_.coef_, old.classifier_.coef_)
    other = _sgd().fit_store(shuffled, "pooled")
    np.testing.assert_array_equal(other.classifier_.coef_, new.classifier_.coef_)
    _assert_same_blocks(_blocks(shuffled, "train", by_id=True), _blocks(sorted_, "train"))
