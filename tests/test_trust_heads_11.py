"""Heads: the selection warning under cross-validation, streamed heads on a data-size sweep's
TrainSubset, and few-shot kNN whose votes all tie beyond k=1."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from test_trust_heads_10 import _rows, chunked_store

from featpipe.errors import ConfigError
from featpipe.heads import KNNProbe, few_shot, select_and_fit
from featpipe.store import FeatureStore, TrainSubset


def test_cross_validation_no_better_than_one_class_warns():
    # 8+2 train rows, no val: 2 folds, k=5 scores 80 % (the common class's share) and its
    # head predicts class 0 for every test row (50 %).
    data = {"train": _rows([8, 2], 216), "test": _rows([5, 5], 999)}
    with pytest.warns(UserWarning, match=r"2-fold cross-validation on 10 train rows, no better"):
        result = select_and_fit("knn", data)
    assert result.selection == "cv2" and result.val_accuracy == pytest.approx(0.8)
    assert set(result.test_pred) == {0}


def test_cross_validation_that_tells_the_candidates_apart_does_not_warn():
    data = {"train": _rows([6] * 4, 1), "test": _rows([3] * 4, 3)}
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*no better than predicting")
        result = select_and_fit("logreg", data, grid={"C": [0.1, 1.0]}, device="cpu", cv=3)
    assert result.selection == "cv3" and result.val_accuracy > 0.5


def _store(path, val: int = 60) -> FeatureStore:
    rng = np.random.default_rng(0)
    n = 180 + val + 60
    y = np.arange(n) % 3
    X = (np.eye(3, 6)[y] * 1.5 + rng.normal(size=(n, 6))).astype(np.float32)
    return chunked_store(path, X, y, [180, val, 60], rows_per_chunk=16)


@pytest.mark.parametrize("head", ["logreg_stream", "knn_faiss"])
def test_streamed_heads_stream_a_train_subset(tmp_path, monkeypatch, head):
    if head == "knn_faiss":
        pytest.importorskip("faiss")
    store = _store(tmp_path / "s.h5")
    subset = TrainSubset(store, [f"s{i}" for i in range(0, 180, 2)])
    grid = {"C": [0.1, 1.0]} if head == "logreg_stream" else {"n_neighbors": [1, 5]}
    arrays = {s: subset.arrays("pooled", s) for s in ("train", "val", "test")}
    expected = select_and_fit(head, arrays, grid=grid, device="cpu", refit_on="train")

    def whole_split(*args, **kwargs):
        raise AssertionError("a streamed head read a whole split")

    # A head that streams reads chunks: never a whole split into memory.
    monkeypatch.setattr(FeatureStore, "arrays", whole_split)
    result = select_and_fit(head, subset, "pooled", grid=grid, device="cpu", refit_on="train")
    assert result.params == expected.params and result.val_accuracy == expected.val_accuracy
    np.testing.assert_array_equal(result.test_pred, expected.test_pred)
    assert result.test_ids == subset.ids("test")


def test_a_train_subset_without_val_is_refused_by_a_streamed_head_as_its_store(tmp_path):
    store = _store(tmp_path / "s.h5", val=0)
    subset = TrainSubset(store, [f"s{i}" for i in range(0, 180, 2)])
    for source in (store, subset):
        with pytest.raises(ConfigError, match="chooses its parameters on the val split"):
            select_and_fit("logreg_stream", source, "pooled", grid={"C": [1.0]}, device="cpu")


@pytest.mark.parametrize("n_classes", [2, 3])
def test_two_shot_knn_whose_votes_all_tie_is_said_so(n_classes):
    # k=2: the default 5 neighbours (capped at the 4 rows of 2 classes, or 5 of the 6 rows of
    # 3 classes) always leave two classes with 2 votes each, and the lowest wins: 50 % and
    # about 40 %, where the nearest neighbour did better.
    data = {"train": _rows([10] * n_classes, 1), "test": _rows([10] * n_classes, 2)}
    with pytest.warns(UserWarning, match="every vote ties"):
        tied = few_shot("knn", data, k=2, draws=3)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*every vote ties")
        nearest = few_shot(KNNProbe(1), data, k=2, draws=3)
        few_shot("knn", data, k=3, draws=1)  # 5 of 3+3 (or 9) rows need not tie
    assert tied.mean < nearest.mean
