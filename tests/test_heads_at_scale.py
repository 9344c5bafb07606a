"""Heads for many rows: kNN through faiss (equal to scikit-learn's) and the Nystroem RBF SVM."""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.neighbors import KNeighborsClassifier
from test_heads_streamed import SPLITS, a_store, blobs

from featpipe.errors import MissingExtraError
from featpipe.extras import has_extra
from featpipe.heads import (
    FaissKNeighborsClassifier,
    FaissKNNProbe,
    KNNProbe,
    NystroemSVMProbe,
    RBFSVMProbe,
    StreamingLogisticProbe,
    load_head,
    save_head,
    select_and_fit,
)
from featpipe.heads.registry import default_heads, list_heads
from featpipe.store import FeatureStore, write_arrays

needs_faiss = pytest.mark.skipif(not has_extra("faiss"), reason='needs "featpipe[faiss]"')


@needs_faiss
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("weights", ["uniform", "distance"])
def test_faiss_neighbours_and_votes_are_scikit_learns(metric, weights) -> None:
    X, y = blobs(600, d=16, classes=5, seed=1)
    X_te, _ = blobs(200, d=16, classes=5, seed=2)
    ours = FaissKNeighborsClassifier(7, metric=metric, weights=weights).fit(X, y)
    ref = KNeighborsClassifier(7, metric=metric, weights=weights, algorithm="brute").fit(X, y)
    dist, ind = ours.kneighbors(X_te)
    ref_dist, ref_ind = ref.kneighbors(X_te)
    np.testing.assert_array_equal(ind, ref_ind)
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(ours.predict(X_te), ref.predict(X_te))
    np.testing.assert_allclose(ours.predict_proba(X_te), ref.predict_proba(X_te), atol=1e-6)


@needs_faiss
def test_faiss_breaks_ties_and_weighs_exact_matches_as_scikit_learn() -> None:
    X = np.array([[0, 1], [0, 2], [1, 0], [2, 0]], dtype=np.float32)
    y = np.array([3, 3, 1, 1])  # a 2-2 vote: the first class (1) wins, as in scikit-learn
    queries = np.array([[1, 1], [0, 1]], dtype=np.float32)  # [0, 1] is a training row
    for weights in ("uniform", "distance"):
        ours = FaissKNeighborsClassifier(4, metric="euclidean", weights=weights).fit(X, y)
        ref = KNeighborsClassifier(4, weights=weights, algorithm="brute").fit(X, y)
        np.testing.assert_array_equal(ours.predict(queries), ref.predict(queries))
        np.testing.assert_allclose(ours.predict_proba(queries), ref.predict_proba(queries))


@needs_faiss
def test_faiss_knn_probe_on_a_store_equals_the_knn_probe(tmp_path) -> None:
    store = a_store(tmp_path / "s.h5", n=900)
    grid = {"n_neighbors": [1, 5, 9], "metric": ["cosine", "euclidean"]}
    sklearn = select_and_fit("knn", store, "pooled", grid=grid)
    with pytest.MonkeyPatch.context() as patch:  # the faiss head reads the store chunk by chunk
        patch.setattr(FeatureStore, "arrays", lambda *a, **k: pytest.fail("read a whole split"))
        faiss = select_and_fit(FaissKNNProbe(chunk_rows=100), store, "pooled", grid=grid)
    assert faiss.params == sklearn.params
    assert [s for _, s in faiss.curve] == [s for _, s in sklearn.curve]
    np.testing.assert_array_equal(faiss.test_pred, sklearn.test_pred)
    np.testing.assert_allclose(faiss.test_scores, sklearn.test_scores)
    # fitted from arrays it is the same head, and it pickles with its index
    X, y = store.arrays("pooled", "train")
    X_te, _ = store.arrays("pooled", "test")
    head = pickle.loads(pickle.dumps(FaissKNNProbe(5).fit(X, y)))
    np.testing.assert_array_equal(head.predict(X_te), KNNProbe(5).fit(X, y).predict(X_te))


def test_faiss_missing_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss now fails
    X, y = blobs(60)
    with pytest.raises(MissingExtraError, match=r'pip install "featpipe\[faiss\]"'):
        FaissKNNProbe().fit(X, y)


def test_nystroem_svm_trains_on_every_row_near_the_exact_svm() -> None:
    X, y = load_digits(return_X_y=True)
    rows = np.random.default_rng(0).permutation(len(y))
    X, y = X[rows].astype(np.float32), y[rows]
    exact = RBFSVMProbe(C=10.0).fit(X[:1200], y[:1200]).score(X[1200:], y[1200:])
    head = NystroemSVMProbe(C=10.0, n_components=300, device="cpu").fit(X[:1200], y[:1200])
    approx = head.score(X[1200:], y[1200:])
    print(f"digits test accuracy: exact RBF SVM {exact:.3f}, Nystroem (300) {approx:.3f}")
    assert approx > exact - 0.03
    assert head.classifier_.features_.components_.shape == (300, 64)
    again = NystroemSVMProbe(C=10.0, n_components=300, device="cpu").fit(X[:1200], y[:1200])
    np.testing.assert_array_equal(again.predict(X[1200:]), head.predict(X[1200:]))


def test_nystroem_selection_path_equals_fitting_each_C(tmp_path) -> None:
    X, y = blobs(600, classes=3)
    store = write_arrays(tmp_path / "s.h5", {"p": X}, y, SPLITS[np.arange(600) % 3], list("abc"))
    head = NystroemSVMProbe(n_components=60, device="cpu")
    grid = {"C": [0.01, 0.1, 1.0]}
    path = select_and_fit(head, store, "p", grid=grid)
    one_by_one = select_and_fit(head, store, "p", grid=[{"C": [c]} for c in grid["C"]])
    assert [round(s, 6) for _, s in path.curve] == [round(s, 6) for _, s in one_by_one.curve]


def test_heads_at_scale_are_registered_outside_the_default_set() -> None:
    assert default_heads() == ["knn", "linear_svm", "logreg", "mlp", "rbf_svm"]
    assert set(list_heads()) - set(default_heads()) == {
        "knn_faiss",
        "logreg_stream",
        "rbf_svm_nystroem",
    }


@needs_faiss
@pytest.mark.skipif(not has_extra("skops"), reason='needs "featpipe[skops]"')
def test_heads_at_scale_save_and_load_as_skops(tmp_path) -> None:
    X, y = blobs(200, d=8, classes=3)
    heads = [
        FaissKNNProbe(3),  # its faiss index travels as faiss's own bytes
        StreamingLogisticProbe(device="cpu"),
        NystroemSVMProbe(n_components=20, device="cpu"),
    ]
    for head in heads:
        path = save_head(head.fit(X, y), tmp_path / f"{type(head).__name__}.skops")
        loaded, _ = load_head(path)
        np.testing.assert_array_equal(loaded.predict(X), head.predict(X))
