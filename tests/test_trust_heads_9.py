"""The warm-started C path spends its gradient halving (68d78cb) only where a C can still be
chosen: past the validation peak the remaining C values stop at tol, as scikit-learn's warm
starts do, and the choice and its solution stay those of the fully solved path."""

from __future__ import annotations

import numpy as np
import pytest

from featpipe.heads import torch_logreg
from featpipe.heads.registry import LOGREG_CS
from featpipe.heads.torch_logreg import logreg_path


def _rows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three overlapping classes in 100 dimensions: validation accuracy peaks at a small C
    (0.80 at C = 1.8e-2 on 200 train rows) and falls to 0.73 as C grows."""
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(0).normal(size=(3, 100)) * 0.2
    y = rng.integers(0, 3, n)
    return (means[y] + rng.normal(size=(n, 100))).astype(np.float32), y


@pytest.fixture(scope="module")
def paths():
    X, y = _rows(200, 1)
    Xv, yv = _rows(400, 2)
    fast = logreg_path(X, y, LOGREG_CS, X_val=Xv, y_val=yv, device="cpu", n_threads=1)
    with pytest.MonkeyPatch.context() as mp:  # never past the peak: every C halves
        mp.setattr(torch_logreg, "_PAST_PEAK_FITS", len(LOGREG_CS) + 1, raising=False)
        full = logreg_path(X, y, LOGREG_CS, X_val=Xv, y_val=yv, device="cpu", n_threads=1)
    return fast, full


def test_past_the_validation_peak_the_path_stops_at_tol(paths):
    fast, full = paths
    assert min(full.n_iter) >= 1  # halving, every C moves from the previous C's weights
    assert sum(fast.n_iter) < sum(full.n_iter)
    assert 0 in fast.n_iter[full.best_index + 1 :]  # past the peak, a warm start below tol stays


def test_the_choice_and_its_solution_are_the_fully_solved_paths(paths):
    fast, full = paths
    i = full.best_index
    assert fast.best_index == i
    assert fast.val_accuracy[: i + 1].tolist() == full.val_accuracy[: i + 1].tolist()
    np.testing.assert_array_equal(fast.coefs[i], full.coefs[i])
    # no C after the chosen one scores above it (a tie goes to the smaller C)
    assert fast.val_accuracy[i + 1 :].max() <= fast.val_accuracy[i]


def test_without_validation_rows_every_c_halves_its_gradient():
    X, y = _rows(200, 1)
    a = logreg_path(X, y, LOGREG_CS[-12:], device="cpu", n_threads=1)
    assert min(a.n_iter) >= 1
