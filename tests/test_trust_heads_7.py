"""Trust tests for the probe heads (round 7): RBFSVMProbe's subsample keeps every class; the
warm-started C paths reach the objective of cold fits."""

import numpy as np
import pytest

from featpipe.heads.estimators import RBFSVMProbe


def _rare_class_data(seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.array([0] * 50 + [1] * 49 + [2])  # class 2 has one row of 100
    X = rng.normal(size=(100, 4)) + 3.0 * y[:, None]
    return X, y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rbf_svm_subsample_keeps_a_one_row_class(seed):
    X, y = _rare_class_data(seed)
    head = RBFSVMProbe(max_train_samples=20, random_state=seed).fit(X, y)
    assert head.classes_.tolist() == [0, 1, 2]
    assert head.predict(X[y == 2]).tolist() == [2]  # the rare class's own row, far from others


def test_subsample_changes_only_draws_that_drop_a_class():
    from sklearn.utils import resample

    from featpipe.heads.estimators import _subsample

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(100, 3)), np.repeat([0, 1, 2, 3], 25)
    Xs, ys = _subsample(X, y, 20, 0)
    Xr, yr = resample(X, y, replace=False, n_samples=20, stratify=y, random_state=0)
    np.testing.assert_array_equal(Xs, Xr)
    np.testing.assert_array_equal(ys, yr)
    X, y = _rare_class_data()
    Xs, ys = _subsample(X, y, 20, 0)
    assert len(ys) == 20 and sorted(set(ys.tolist())) == [0, 1, 2]
    assert len({tuple(row) for row in Xs}) == 20  # no row twice


def test_warm_started_c_path_reaches_a_cold_fits_objective():
    """Nearly separable rows (d=40, n=150): the scaled gradient at the previous C's solution
    is below tol at large C, where the path used to stop with 0 iterations, up to 3x a cold
    fit's objective above the optimum."""
    from featpipe.heads.registry import LOGREG_CS
    from featpipe.heads.torch_logreg import (
        TorchLogisticRegression,
        logistic_objective,
        logreg_path,
    )

    rng = np.random.default_rng(0)
    means = rng.normal(size=(3, 40)) * 0.6
    y = rng.integers(0, 3, 150)
    X = (means[y] + rng.normal(size=(150, 40))).astype(np.float32)
    Cs = [C for C in LOGREG_CS if C <= 1e4]
    path = logreg_path(X, y, Cs, device="cpu", n_threads=1)
    assert min(path.n_iter) >= 1
    for i, C in enumerate(Cs):
        if C < 1:
            continue
        cold = TorchLogisticRegression(C=C, device="cpu", n_threads=1).fit(X, y)
        on_path = logistic_objective(X, y, path.coefs[i], path.intercepts[i], C)
        assert on_path <= 1.01 * logistic_objective(X, y, cold.coef_, cold.intercept_, C), C
