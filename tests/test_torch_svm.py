"""TorchLinearSVC minimises liblinear's LinearSVC objective; its C path warm-starts."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.svm import LinearSVC

from featpipe.errors import ConfigError
from featpipe.heads import (
    LinearSVMProbe,
    TorchLinearSVC,
    linear_svm_path,
    select_and_fit,
    squared_hinge_objective,
)

FAST = {"device": "cpu", "n_threads": 1}
# float32 scores leave max |gradient| around 1e-5, just above the tight tol used here
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.mark.parametrize("C", [1e-3, 1e-1, 1.0])
def test_same_objective_and_accuracy_as_liblinear(digits, C: float) -> None:
    X_tr, y_tr, X_te, y_te = digits
    ref = LinearSVC(C=C, tol=1e-8, max_iter=100_000).fit(X_tr, y_tr)
    ours = TorchLinearSVC(C=C, tol=1e-5, max_iter=5000, **FAST).fit(X_tr, y_tr)
    f_ref = squared_hinge_objective(X_tr, y_tr, ref.coef_, ref.intercept_, C)
    f_ours = squared_hinge_objective(X_tr, y_tr, ours.coef_, ours.intercept_, C)
    assert f_ours == pytest.approx(f_ref, rel=1e-4)
    assert abs(ours.score(X_te, y_te) - ref.score(X_te, y_te)) <= 0.002
    assert ours.coef_.shape == ref.coef_.shape == (10, 64)


def test_objective_helper_is_liblinears_primal() -> None:
    """One-vs-rest rows, squared hinge, and the intercept penalised (intercept_scaling=1)."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(30, 4)), np.arange(30) % 3
    W, b, C = rng.normal(size=(3, 4)), rng.normal(size=3), 0.7
    total = 0.5 * ((W**2).sum() + (b**2).sum())
    for k in range(3):
        t = np.where(y == k, 1.0, -1.0)
        total += C * (np.maximum(0, 1 - t * (X @ W[k] + b[k])) ** 2).sum()
    assert squared_hinge_objective(X, y, W, b, C) == pytest.approx(total)


def test_two_classes_use_liblinears_layout_and_sign() -> None:
    X, y = make_classification(300, 6, random_state=0)
    labels = np.where(y, "yes", "no")
    ref = LinearSVC(C=0.5, tol=1e-8, max_iter=100_000).fit(X, labels)
    ours = TorchLinearSVC(C=0.5, tol=1e-5, **FAST).fit(X, labels)
    assert ours.coef_.shape == (1, 6) and ours.decision_function(X).shape == (300,)
    np.testing.assert_allclose(ours.coef_, ref.coef_, atol=1e-3)
    np.testing.assert_allclose(ours.intercept_, ref.intercept_, atol=1e-3)
    np.testing.assert_array_equal(ours.predict(X), ref.predict(X))


def test_path_matches_cold_fits_and_reports_val_accuracy(digits) -> None:
    X_tr, y_tr, X_te, y_te = digits
    Cs = [1e-3, 1e-2, 1e-1]
    path = linear_svm_path(X_tr, y_tr, Cs, X_val=X_te, y_val=y_te, tol=1e-5, **FAST)
    for i, C in enumerate(Cs):
        cold = TorchLinearSVC(C=C, tol=1e-5, **FAST).fit(X_tr, y_tr)
        f = [
            squared_hinge_objective(X_tr, y_tr, coef, b, C)
            for coef, b in [(path.coefs[i], path.intercepts[i]), (cold.coef_, cold.intercept_)]
        ]
        assert f[0] == pytest.approx(f[1], rel=1e-4)
        assert path.val_accuracy[i] == pytest.approx(cold.score(X_te, y_te), abs=0.003)
    best = path.estimator(path.best_index)
    assert isinstance(best, TorchLinearSVC)
    assert best.score(X_te, y_te) == pytest.approx(path.val_accuracy.max(), abs=1e-9)
    assert (
        sum(path.n_iter[1:])
        < sum(  # warm starts: later Cs start near their optimum
            TorchLinearSVC(C=C, tol=1e-5, **FAST).fit(X_tr, y_tr).n_iter_[0] for C in Cs[1:]
        )
    )


def test_probe_solvers_agree_and_selection_uses_the_path() -> None:
    X, y = make_classification(
        600, 12, n_informative=8, n_classes=3, n_clusters_per_class=1, random_state=0
    )
    data = {"train": (X[:400], y[:400]), "val": (X[400:500], y[400:500])}
    data["test"] = (X[500:], y[500:])
    grid = {"C": [1e-3, 1e-1, 10.0]}
    fast = select_and_fit(LinearSVMProbe(**FAST), data, grid=grid)
    slow = select_and_fit(LinearSVMProbe(solver="liblinear"), data, grid=grid)
    refit = select_and_fit(LinearSVMProbe(**FAST), data, grid=[grid, {"C": [1.0]}])  # no path
    scores = [[s for _, s in r.curve][:3] for r in (fast, slow, refit)]
    np.testing.assert_allclose(scores[0], scores[2], atol=0.01 + 1e-9)
    np.testing.assert_allclose(scores[0], scores[1], atol=0.02 + 1e-9)
    assert isinstance(fast.estimator.classifier_, TorchLinearSVC)
    assert isinstance(slow.estimator.classifier_, LinearSVC)


def test_unknown_solver_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="Unknown linear SVM solver 'dual'; valid: lbfgs"):
        LinearSVMProbe(solver="dual").fit(np.eye(4), [0, 1, 0, 1])
