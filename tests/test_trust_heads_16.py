"""Heads fit a store's rows in the order of their ids: the same images listed in another order
give the same subsample (``max_train_samples``), CV folds and few-shot draws, so the same model."""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pytest
from conftest import listed_store

from featpipe.heads import few_shot, select_and_fit
from featpipe.store import FeatureStore

N, SIZES = 90, [60, 15, 15]  # train, val, test
SORTED = np.arange(N)
# each split's rows listed in another order (a CSV manifest sorted otherwise, say)
SHUFFLED = np.concatenate(
    [
        start + np.random.default_rng(5).permutation(n)
        for start, n in zip([0, 60, 75], SIZES, strict=True)
    ]
)


def _store(path, order: np.ndarray, val: bool = True) -> FeatureStore:
    """The same 90 images of 3 classes (ids s000..s089), written in ``order``; without ``val``
    its rows are train."""
    rng = np.random.default_rng(0)
    y = np.arange(N) % 3
    X = (np.eye(3, 6)[y] + rng.normal(size=(N, 6))).astype(np.float32)
    ids = np.array([f"s{i:03d}" for i in range(N)])
    splits = np.repeat(np.array([0, 1 if val else 0, 2], dtype=np.uint8), SIZES)
    return listed_store(path, order, {"pooled": X}, y, splits, ids, rows_per_chunk=N)


def _by_id(result) -> dict[str, tuple]:
    """The refit head's decision values on each test image, by id."""
    return {
        i: tuple(s)
        for i, s in zip(result.test_ids, result.test_scores.round(6).tolist(), strict=True)
    }


def _svm(store, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few val rows: no better than one class
        grid = {"C": [0.5, 2.0], "max_train_samples": [20]}
        return select_and_fit("rbf_svm", store, "pooled", grid=grid, **kw)


@pytest.mark.parametrize("val", [True, False], ids=["val", "cv"])
def test_the_same_images_listed_in_another_order_fit_the_same_subsampled_svm(tmp_path, val):
    a = _svm(_store(tmp_path / "a.h5", SORTED, val))
    b = _svm(_store(tmp_path / "b.h5", SHUFFLED, val))
    assert a.curve == b.curve
    assert _by_id(a) == _by_id(b)


def test_the_same_images_listed_in_another_order_draw_the_same_few_shot_rows(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # k=2 kNN votes tie
        a = few_shot("knn", _store(tmp_path / "a.h5", SORTED), "pooled", k=2, draws=4)
        b = few_shot("knn", _store(tmp_path / "b.h5", SHUFFLED), "pooled", k=2, draws=4)
    assert a.accuracies == b.accuracies


# computed on the code before heads followed ids
PINNED_SUPPORT = "24ec2d8f28d883e5"  # sha256 of the refit SVM's support vectors' ids
PINNED_CURVE = [0.5333333333333333, 0.5333333333333333]
PINNED_SHOTS = [0.4, 0.4, 0.4666666666666667, 0.3333333333333333]


def test_rows_in_id_order_keep_the_rows_they_kept_before(tmp_path):
    store = _store(tmp_path / "a.h5", SORTED)
    result = _svm(store)
    refit = np.asarray(store.ids("train") + store.ids("val"))
    support = ",".join(sorted(refit[result.estimator.classifier_.support_]))
    assert hashlib.sha256(support.encode()).hexdigest()[:16] == PINNED_SUPPORT
    assert [s for _, s in result.curve] == PINNED_CURVE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # k=2 kNN votes tie
        assert few_shot("knn", store, "pooled", k=2, draws=4).accuracies == PINNED_SHOTS
