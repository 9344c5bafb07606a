"""TorchMLPClassifier: scikit-learn's MLP recipe in torch, early stopping, an alpha path."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

from featpipe.errors import ConfigError
from featpipe.heads import MLPProbe, TorchMLPClassifier, mlp_path, select_and_fit

FAST = {"device": "cpu", "n_threads": 1}


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    scaler = StandardScaler().fit(X_tr)
    return (
        scaler.transform(X_tr).astype(np.float32),
        y_tr,
        scaler.transform(X_te).astype(np.float32),
        y_te,
    )


def test_deterministic_given_random_state(digits) -> None:
    X, y = digits[0][:500], digits[1][:500]
    a, b = (TorchMLPClassifier((16,), random_state=3, **FAST).fit(X, y) for _ in range(2))
    c = TorchMLPClassifier((16,), random_state=4, **FAST).fit(X, y)
    for wa, wb in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_, strict=True):
        np.testing.assert_array_equal(wa, wb)
    assert not np.array_equal(a.coefs_[0], c.coefs_[0])


def test_early_stopping_keeps_the_best_epoch(digits) -> None:
    X, y = digits[:2]
    est = TorchMLPClassifier((32,), n_iter_no_change=5, **FAST).fit(X, y)
    scores = est.validation_scores_
    assert len(scores) == est.n_iter_ == len(est.loss_curve_) < est.max_iter
    assert est.best_validation_score_ == max(scores)
    # scikit-learn's rule: stop once n_iter_no_change + 1 epochs passed without gaining tol
    assert all(s < max(scores[: -6 or None]) + est.tol for s in scores[-6:])
    # the weights kept are the best epoch's: scoring the internal val rows reproduces it
    _, X_va, _, y_va = train_test_split(X, y, test_size=0.1, stratify=y, random_state=0)
    assert est.score(X_va, y_va) == pytest.approx(est.best_validation_score_)


def test_accuracy_is_that_of_mlpclassifier(digits) -> None:
    X_tr, y_tr, X_te, y_te = digits
    ours = TorchMLPClassifier((64,), **FAST).fit(X_tr, y_tr)
    ref = MLPClassifier((64,), early_stopping=True, random_state=0).fit(X_tr, y_tr)
    assert ours.coefs_[0].shape == ref.coefs_[0].shape == (64, 64)
    assert ours.predict_proba(X_te).shape == (len(y_te), 10)
    assert ours.score(X_te, y_te) >= ref.score(X_te, y_te) - 0.02


def test_alpha_path_gives_each_alphas_own_fit(digits) -> None:
    X_tr, y_tr, X_te, y_te = digits
    alphas = [1e-4, 1.0, 10.0]
    path = mlp_path(X_tr, y_tr, alphas, X_val=X_te, y_val=y_te, hidden_layer_sizes=(32,), **FAST)
    epochs = [m.n_iter_ for m in path.estimators]
    assert len(set(epochs)) > 1  # models left the batch at different epochs
    for alpha, model, acc in zip(alphas, path.estimators, path.val_accuracy, strict=True):
        alone = TorchMLPClassifier((32,), alpha=alpha, **FAST).fit(X_tr, y_tr)
        assert model.n_iter_ == alone.n_iter_ and model.alpha == alpha
        for a, b in zip(model.coefs_, alone.coefs_, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5)
        assert acc == pytest.approx(alone.score(X_te, y_te))
    assert path.best_index == int(np.argmax(path.val_accuracy))


def test_few_shot_sets_train_without_early_stopping() -> None:
    X = np.random.default_rng(0).normal(size=(3, 5))
    est = TorchMLPClassifier((8,), learning_rate_init=0.05, **FAST).fit(X, ["a", "b", "c"])
    assert est.validation_scores_ is None and est.n_iter_ < est.max_iter
    assert list(est.predict(X)) == ["a", "b", "c"]


def test_selection_uses_the_path_and_keeps_sklearn_as_an_option(digits) -> None:
    X_tr, y_tr, X_te, y_te = digits
    data = {"train": (X_tr[:900], y_tr[:900]), "val": (X_tr[900:], y_tr[900:])}
    data["test"] = (X_te, y_te)
    grid = {"alpha": [1e-4, 1.0]}
    fast = select_and_fit(MLPProbe((32,), **FAST), data, grid=grid)
    slow = select_and_fit(MLPProbe((32,), **FAST), data, grid=[grid, {"alpha": [0.1]}])
    np.testing.assert_allclose([s for _, s in fast.curve], [s for _, s in slow.curve][:2])
    assert isinstance(fast.estimator.classifier_, TorchMLPClassifier)
    ref = select_and_fit(MLPProbe((32,), solver="sklearn"), data, grid=grid)
    assert isinstance(ref.estimator.classifier_, MLPClassifier)
    assert ref.estimator.classifier_.early_stopping
    assert abs(fast.test_accuracy - ref.test_accuracy) < 0.05


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"alpha": -1.0}, "alpha must be >= 0"),
        ({"batch_size": 0}, "batch_size must be 'auto' or a positive integer"),
        ({"validation_fraction": 1.0}, r"validation_fraction in \(0, 1\)"),
        ({"hidden_layer_sizes": (0,)}, "hidden_layer_sizes must be positive"),
    ],
)
def test_bad_params_raise_config_error(params: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        TorchMLPClassifier(**params).fit(np.eye(4), [0, 1, 0, 1])
    with pytest.raises(ConfigError, match="Unknown MLP solver 'lbfgs'"):
        MLPProbe(solver="lbfgs").fit(np.eye(4), [0, 1, 0, 1])
