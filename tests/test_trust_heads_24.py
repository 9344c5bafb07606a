"""Ties in validation accuracy go to the lowest validation log loss, then to the smallest values.

Two well-separated classes: every C classifies the val rows perfectly, so all candidates tie on
accuracy. At C=1e-6 the weights are nearly zero and every probability is about 0.5 (log loss
ln 2); at C=1 the probabilities are confident. The smallest C used to win every such tie (a
CIFAR run chose C=1e-6 with every probability 0.100).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from featpipe.heads import logreg_path
from featpipe.heads.selection import best_candidate, select_and_fit, val_log_loss
from featpipe.heads.torch_svm import linear_svm_path
from featpipe.store.writer import write_arrays

CS = [1e-6, 1.0]


def _blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two classes 8 standard deviations apart along every one of 5 features."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    return rng.normal(size=(n, 5)) + 4.0 * (2 * y[:, None] - 1), y


def _source() -> dict:
    return {"train": _blobs(40, 0), "val": _blobs(20, 1), "test": _blobs(20, 2)}


def test_the_rule_breaks_accuracy_ties_by_log_loss_then_takes_the_first() -> None:
    assert best_candidate([0.5, 0.9, 0.9, 0.9], [np.nan, 0.7, 0.2, 0.2]) == 2
    assert best_candidate([0.5, 0.9, 0.9], None) == 1  # no probabilities: the first
    assert best_candidate([0.9, 0.5], [0.9, 0.1]) == 0  # log loss never beats accuracy


@pytest.mark.parametrize("head", ["logreg", LogisticRegression()], ids=["c-path", "grid"])
def test_a_tie_goes_to_the_c_of_lower_val_log_loss(head) -> None:
    """The warm-started C path (logreg) and the candidate-by-candidate grid (any sklearn
    classifier) both choose C=1, not the near-uniform C=1e-6."""
    result = select_and_fit(head, _source(), grid={"C": CS}, seed=0)
    assert [score for _, score in result.curve] == [1.0, 1.0]  # the tie
    assert result.params == {"C": 1.0}
    assert result.test_scores.max() > 0.99  # the refitted head is confident


# C=1e-6 on a fold's 32 rows stops just above tol (float32 under very strong regularisation)
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_under_cross_validation_too() -> None:
    X, y = _blobs(40, 0)
    result = select_and_fit("logreg", {"train": (X, y)}, grid={"C": CS}, cv=5, seed=0)
    assert [score for _, score in result.curve] == [1.0, 1.0]  # the mean over 5 folds ties
    assert result.selection == "cv5" and result.params == {"C": 1.0}


def test_a_streamed_head_breaks_its_tie_the_same_way(tmp_path) -> None:
    parts = _source()
    X = np.concatenate([x for x, _ in parts.values()])
    y = np.concatenate([y for _, y in parts.values()])
    splits = np.repeat(list(parts), [len(y) for _, y in parts.values()])
    store = write_arrays(tmp_path / "s.h5", {"pooled": X}, y, splits, ["a", "b"])
    result = select_and_fit("logreg_stream", store, "pooled", grid={"C": CS}, seed=0)
    assert result.params == {"C": 1.0}


def test_the_c_path_best_index_uses_the_same_rule() -> None:
    """LP-FT's probe chooses its C by ``LinearPath.best_index``."""
    (X, y), (Xv, yv) = _blobs(40, 0), _blobs(20, 1)
    path = logreg_path(X, y, CS, X_val=Xv, y_val=yv, device="cpu")
    assert list(path.val_accuracy) == [1.0, 1.0]
    assert path.val_log_loss[0] == pytest.approx(math.log(2), abs=1e-3)  # flat at C=1e-6
    assert path.val_log_loss[1] < 0.05
    assert path.best_index == 1


def test_heads_without_probabilities_keep_the_smallest_c() -> None:
    """A linear SVM has no log loss: its tie goes to the smallest C as before."""
    result = select_and_fit("linear_svm", _source(), grid={"C": CS}, seed=0)
    assert result.params == {"C": 1e-6}
    (X, y), (Xv, yv) = _blobs(40, 0), _blobs(20, 1)
    path = linear_svm_path(X, y, CS, X_val=Xv, y_val=yv, device="cpu")
    assert path.val_log_loss is None and path.best_index == 0


def test_val_log_loss_counts_a_class_the_head_never_saw_as_probability_zero() -> None:
    X, y = _blobs(40, 0)
    head = LogisticRegression().fit(X, y)
    seen = val_log_loss(head, X[:4], y[:4])
    unseen = val_log_loss(head, X[:4], np.array([0, 1, 0, 7]))
    assert seen < 0.01
    assert unseen == pytest.approx(-math.log(1e-15) / 4, rel=0.01)
