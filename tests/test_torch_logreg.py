"""TorchLogisticRegression minimises scikit-learn's objective; the C path warm-starts."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import make_classification
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from featpipe.distributed.progress import progress_bar
from featpipe.errors import ConfigError
from featpipe.heads import (
    TorchLinearSVC,
    TorchLogisticRegression,
    linear_svm_path,
    logistic_objective,
    logreg_path,
)
from featpipe.heads.torch_logreg import _Problem, run_path


@pytest.mark.parametrize("C", [1e-3, 1e-1, 1.0, 10.0])
def test_same_objective_and_accuracy_as_sklearn(digits, C: float) -> None:
    X_tr, y_tr, X_te, y_te = digits
    ref = LogisticRegression(C=C, tol=1e-8, max_iter=20_000).fit(X_tr, y_tr)
    ours = TorchLogisticRegression(C=C, tol=1e-6, device="cpu", n_threads=1).fit(X_tr, y_tr)
    f_ref = logistic_objective(X_tr, y_tr, ref.coef_, ref.intercept_, C)
    f_ours = logistic_objective(X_tr, y_tr, ours.coef_, ours.intercept_, C)
    assert f_ours == pytest.approx(f_ref, rel=1e-4)
    assert f_ours >= f_ref * (1 - 1e-7)  # the reference is the (tight) optimum
    assert abs(ours.score(X_te, y_te) - ref.score(X_te, y_te)) <= 0.002
    assert ours.coef_.shape == (10, 64) and ours.intercept_.shape == (10,)
    assert ours.n_iter_[0] > 0


def test_objective_helper_is_sklearn_scaled_loss(digits) -> None:
    """logistic_objective = C * sum CE + 0.5 ||W||^2, checked against a direct computation."""
    X, y = digits[0][:50], digits[1][:50]
    rng = np.random.default_rng(0)
    W, b, C = rng.normal(size=(10, 64)), rng.normal(size=10), 0.3
    z = X @ W.T + b
    ce = np.log(np.exp(z).sum(1)) - z[np.arange(50), y]
    assert logistic_objective(X, y, W, b, C) == pytest.approx(C * ce.sum() + 0.5 * (W**2).sum())


def test_binary_uses_sklearn_layout() -> None:
    X, y = make_classification(200, 6, random_state=0)
    est = TorchLogisticRegression(device="cpu").fit(X, np.where(y, "b", "a"))
    assert est.coef_.shape == (1, 6) and est.decision_function(X).shape == (200,)
    proba = est.predict_proba(X)
    np.testing.assert_array_equal(est.classes_[proba.argmax(1)], est.predict(X))


@pytest.mark.parametrize(("n_classes", "C"), [(2, 0.01), (2, 1.0), (3, 0.1), (10, 0.1)])
def test_C_means_what_it_means_in_sklearn(n_classes: int, C: float) -> None:
    # Two classes used to be a symmetric multinomial, whose penalty on the logit difference
    # is half scikit-learn's: C acted as scikit-learn's 2C.
    X, y = make_classification(
        400, 8, n_informative=6, n_classes=n_classes, n_clusters_per_class=1, random_state=0
    )
    X = StandardScaler().fit_transform(X)
    ref = LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        ours = TorchLogisticRegression(C=C, tol=1e-6, device="cpu").fit(X, y)
    assert ours.coef_.shape == ref.coef_.shape
    np.testing.assert_allclose(ours.coef_, ref.coef_, atol=1e-3)
    np.testing.assert_allclose(ours.intercept_, ref.intercept_, atol=1e-3)
    f = [logistic_objective(X, y, m.coef_, m.intercept_, C) for m in (ours, ref)]
    assert f[0] == pytest.approx(f[1], rel=1e-6)
    path = logreg_path(X, y, [C], tol=1e-6, device="cpu")
    np.testing.assert_allclose(path.coefs[0], ref.coef_, atol=1e-3)


def test_objective_helper_binary_is_sklearn_binomial_loss() -> None:
    X, y = make_classification(50, 4, random_state=1)
    w, b, C = np.array([[0.5, -1.0, 0.2, 0.0]]), np.array([0.3]), 0.7
    z = X @ w[0] + b[0]
    loss = np.logaddexp(0, -np.where(y == 1, z, -z)).sum()
    assert logistic_objective(X, y, w, b, C) == pytest.approx(C * loss + 0.5 * (w**2).sum())


def test_warns_whenever_the_gradient_stays_above_tol(digits) -> None:
    # tol=1e-9 is out of float32's reach: L-BFGS stops on tolerance_change or a failed line
    # search long before max_iter, and the old check (n_iter >= max_iter) stayed silent.
    X_tr, y_tr = digits[:2]
    with pytest.warns(ConvergenceWarning, match=r"above tol=1e-09 \(C=1: [\d.e-]+ after \d+ it"):
        est = TorchLogisticRegression(C=1.0, tol=1e-9, device="cpu").fit(X_tr, y_tr)
    assert est.n_iter_[0] < 1000
    with pytest.warns(ConvergenceWarning, match=r"after \d iterations; max_iter=3\)"):
        TorchLogisticRegression(C=1.0, max_iter=3, device="cpu").fit(X_tr, y_tr)
    with pytest.warns(ConvergenceWarning, match=r"tol=1e-09 for 2 of 2 values of C \(C=0.01: "):
        logreg_path(X_tr, y_tr, [0.01, 1.0], tol=1e-9, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        TorchLogisticRegression(C=1.0, device="cpu").fit(X_tr, y_tr)  # converged: silent


def test_path_matches_independent_fits_and_reports_val_accuracy(digits) -> None:
    X_tr, y_tr, X_te, y_te = digits
    Cs = [1e-4, 1e-2, 1.0]
    path = logreg_path(X_tr, y_tr, Cs, X_val=X_te, y_val=y_te, tol=1e-6, device="cpu")
    assert len(path.coefs) == 3 and path.val_accuracy.shape == (3,)
    for i, C in enumerate(Cs):
        cold = TorchLogisticRegression(C=C, tol=1e-6, device="cpu").fit(X_tr, y_tr)
        f_path = logistic_objective(X_tr, y_tr, path.coefs[i], path.intercepts[i], C)
        f_cold = logistic_objective(X_tr, y_tr, cold.coef_, cold.intercept_, C)
        assert f_path == pytest.approx(f_cold, rel=1e-4)
        assert path.val_accuracy[i] == pytest.approx(cold.score(X_te, y_te), abs=0.003)
    best = path.estimator(path.best_index)
    assert best.score(X_te, y_te) == pytest.approx(path.val_accuracy.max(), abs=1e-9)


def test_warm_start_needs_fewer_iterations(digits) -> None:
    X_tr, y_tr = digits[:2]
    est = TorchLogisticRegression(C=1.0, device="cpu", warm_start=True).fit(X_tr, y_tr)
    first = est.n_iter_[0]
    est.set_params(C=1.2).fit(X_tr, y_tr)
    assert est.n_iter_[0] < first


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"C": 0.0}, "C must be a positive"),
        ({"C": -1.0}, "C must be a positive"),
        ({"device": "tpu"}, "Unknown device 'tpu'"),
    ],
)
def test_bad_params_raise_config_error(params: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        TorchLogisticRegression(**params).fit(np.eye(4), [0, 1, 0, 1])


@pytest.mark.parametrize("cls", [TorchLogisticRegression, TorchLinearSVC])
def test_warm_start_on_another_width_starts_cold(cls) -> None:
    X, y = make_classification(60, 6, n_informative=4, n_classes=3, random_state=0)
    est = cls(warm_start=True, device="cpu", n_threads=1).fit(X, y)
    est.fit(X[:, :4], y)  # same classes, fewer features: was a torch shape error
    cold = cls(device="cpu", n_threads=1).fit(X[:, :4], y)
    assert est.coef_.shape == (3, 4) and est.n_features_in_ == 4
    np.testing.assert_allclose(est.coef_, cold.coef_, atol=1e-3)


@pytest.mark.parametrize("path", [logreg_path, linear_svm_path])
@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), "1"])
def test_c_path_checks_every_C_before_it_starts(monkeypatch, path, bad) -> None:
    def no_fit(*args, **kwargs):
        raise AssertionError("the path started before its C values were checked")

    monkeypatch.setattr(_Problem, "minimise", no_fit)
    X, y = make_classification(30, 4, n_informative=3, n_redundant=0, random_state=0)
    with pytest.raises(ConfigError, match=rf"C must be a positive finite number; got {bad!r}"):
        path(X, y, [1.0, bad], device="cpu")
    # run_path, which the streamed path calls, checks too
    problem = _Problem(X, y, 2, torch.device("cpu"))
    with pytest.raises(ConfigError, match=rf"C must be a positive finite number; got {bad!r}"):
        run_path(problem, [1.0, bad], np.array([0, 1]), TorchLogisticRegression, None,
                 tol=1e-4, max_iter=10, progress=progress_bar(2, enabled=False))  # fmt: skip


def test_one_class_is_refused() -> None:
    with pytest.raises(ConfigError, match="at least 2 classes"):
        TorchLogisticRegression(device="cpu").fit(np.eye(3), [1, 1, 1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("n_classes", [2, 10])
def test_cuda_fit_matches_sklearn(n_classes: int) -> None:
    X, y = make_classification(
        400, 8, n_informative=6, n_classes=n_classes, n_clusters_per_class=1, random_state=0
    )
    X = StandardScaler().fit_transform(X)
    ref = LogisticRegression(C=0.1, tol=1e-10, max_iter=10_000).fit(X, y)
    last = torch.cuda.device_count() - 1
    ours = TorchLogisticRegression(C=0.1, tol=1e-6, device=f"cuda:{last}").fit(X, y)
    np.testing.assert_allclose(ours.coef_, ref.coef_, atol=1e-3)
    path = logreg_path(X, y, [0.1], X_val=X, y_val=y, tol=1e-6, device=f"cuda:{last}")
    assert path.val_accuracy[0] == pytest.approx(ref.score(X, y), abs=0.005)
