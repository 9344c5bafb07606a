"""Heads: preprocessing choices, the name registry, and behaviour on synthetic features."""

from __future__ import annotations

import numpy as np
import pytest

from featpipe.errors import ConfigError, UnknownNameError
from featpipe.heads import (
    KNNProbe,
    LinearSVMProbe,
    LogisticProbe,
    MLPProbe,
    RBFSVMProbe,
    default_grid,
    list_heads,
    make_head,
)
from featpipe.heads.preprocess import make_preprocessor


def blobs(n: int = 120, d: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    centres = np.random.default_rng(5).normal(scale=3.0, size=(3, d))
    return (centres[y] + rng.normal(size=(n, d))) * 50 + 100, y  # far from standardised


@pytest.mark.parametrize(
    ("preprocess", "pca", "check"),
    [
        ("standardize", None, lambda Z: np.allclose(Z.mean(0), 0, atol=1e-8)),
        ("l2", None, lambda Z: np.allclose(np.linalg.norm(Z, axis=1), 1)),
        ("none", None, lambda Z: Z.mean() > 50),
        ("standardize", 3, lambda Z: Z.shape[1] == 3),
    ],
)
def test_preprocessing_options(preprocess, pca, check) -> None:
    X, _ = blobs()
    assert check(make_preprocessor(preprocess, pca).fit_transform(X))


def test_unknown_preprocess_and_pca_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"Unknown preprocess 'zscore'.*standardize, l2, none"):
        make_preprocessor("zscore")
    with pytest.raises(ConfigError, match="pca must be a positive"):
        make_preprocessor("l2", 0)


def test_registry_names_classes_and_grids() -> None:
    assert set(list_heads()) >= {"knn", "linear_svm", "logreg", "mlp", "rbf_svm"}
    kinds = {
        "logreg": LogisticProbe,
        "linear_svm": LinearSVMProbe,
        "rbf_svm": RBFSVMProbe,
        "mlp": MLPProbe,
        "knn": KNNProbe,
    }
    for name, cls in kinds.items():
        assert type(make_head(name)) is cls
    Cs = default_grid("logreg")["C"]
    assert len(Cs) == 45 and Cs[0] == pytest.approx(1e-6) and Cs[-1] == pytest.approx(1e5)
    assert make_head("knn", n_neighbors=3).n_neighbors == 3
    with pytest.raises(UnknownNameError, match="Did you mean: 'rbf_svm'"):
        make_head("rbf-svm")


@pytest.mark.parametrize("name", ["logreg", "linear_svm", "rbf_svm", "mlp", "knn"])
def test_each_head_learns_and_has_scores(name: str) -> None:
    X, y = blobs()
    X_te, y_te = blobs(seed=1)
    head = make_head(name).fit(X, y)
    assert head.score(X_te, y_te) > 0.9
    scores = (
        head.predict_proba(X_te)
        if hasattr(head, "predict_proba")
        else (head.decision_function(X_te))
    )
    assert scores.shape == (len(y_te), 3)
    assert (head.classes_[scores.argmax(1)] == head.predict(X_te)).mean() > 0.97


def test_pca_is_capped_by_the_number_of_samples() -> None:
    X, y = blobs(n=6)
    head = KNNProbe(n_neighbors=10, pca=50).fit(X, y)
    assert head.preprocessor_.named_steps["pca"].n_components_ == 6
    assert head.classifier_.n_neighbors == 6


def test_knn_metric_is_checked() -> None:
    X, y = blobs()
    with pytest.raises(ConfigError, match="Unknown kNN metric 'manhattan'"):
        KNNProbe(metric="manhattan").fit(X, y)
    cos = KNNProbe(metric="cosine", preprocess="none").fit(X, y)
    scaled = KNNProbe(metric="cosine", preprocess="none").fit(X * 7, y)
    np.testing.assert_array_equal(cos.predict(X), scaled.predict(X * 7))  # scale invariant


def test_rbf_svm_fits_on_a_stratified_subsample_when_asked() -> None:
    X, y = blobs(n=120)
    limited = RBFSVMProbe(max_train_samples=30).fit(X, y)
    full = RBFSVMProbe(max_train_samples=None).fit(X, y)
    assert limited.classifier_.shape_fit_[0] == 30
    assert list(limited.classes_) == [0, 1, 2]
    assert full.classifier_.shape_fit_[0] == 120
    assert limited.score(X, y) > 0.9


def test_make_head_names_the_valid_parameters() -> None:
    with pytest.raises(ConfigError, match=r"'knn' has no parameter 'n_neighbours'.*n_neighbors"):
        make_head("knn", n_neighbours=3)  # was a raw TypeError
    assert make_head("knn", n_neighbors=3).n_neighbors == 3
