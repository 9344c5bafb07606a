"""Linear SVM by full-batch L-BFGS in torch: liblinear's default ``LinearSVC`` objective.

One-vs-rest L2-regularised squared hinge with liblinear's bias handling (``intercept_scaling=1``:
the intercept is the weight of a constant feature 1 and is penalised like any weight), per
class row k:

    0.5 * (||w_k||^2 + b_k^2) + C * sum_i max(0, 1 - t_ik (w_k . x_i + b_k))^2

with t_ik = +1 for class k and -1 otherwise; two classes fit one row (class 1 positive), as
scikit-learn does. The rows are independent, so all of them are fitted as one sum, by the same
L-BFGS, estimator base and warm-started C path as the logistic regression
(``torch_logreg.py``), in float32 on CPU or CUDA.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from featpipe.heads.torch_logreg import LinearPath, TorchLinearClassifier, _Problem, linear_path


def squared_hinge_objective(
    X: np.ndarray, y: np.ndarray, coef: np.ndarray, intercept: np.ndarray, C: float
) -> float:
    """liblinear's primal ``0.5 ||[W, b]||^2 + C * sum squared hinge`` over the one-vs-rest
    rows, in float64. ``y`` holds class indices 0..K-1; ``coef`` is (K, D), or (1, D) for two
    classes (class 1 positive)."""
    coef, intercept = np.asarray(coef, np.float64), np.asarray(intercept, np.float64)
    scores = np.asarray(X, np.float64) @ coef.T + intercept
    slack = np.maximum(0.0, 1.0 - _targets(np.asarray(y), coef.shape[0]) * scores)
    return float(C * np.sum(slack**2) + 0.5 * (np.sum(coef**2) + np.sum(intercept**2)))


def _targets(y_idx: np.ndarray, rows: int) -> np.ndarray:
    """(n, rows) of +1 / -1: one-vs-rest, or class 1 against class 0 when rows == 1."""
    positive = np.arange(rows) if rows > 1 else np.array([1])
    return np.where(y_idx[:, None] == positive[None, :], 1.0, -1.0)


class _HingeProblem(_Problem):
    """The scaled objective ``sum_k mean_i slack_ik^2 + ||[W, b]||^2 / (2 C n)``."""

    def __init__(self, X: np.ndarray, y_idx: np.ndarray, n_classes: int, device: torch.device):
        super().__init__(X, y_idx, n_classes, device)
        self.t = torch.as_tensor(_targets(y_idx, self.rows), dtype=torch.float32, device=device)

    def batches(self):
        yield self.X, self.t  # the targets stand in for the labels

    def data_terms(self, X, t, W, b):
        slack = (1.0 - t * F.linear(X, W, b)).clamp_(min=0.0)
        loss = slack.double().square().sum() / self.n  # float64, as for logreg
        G = slack.mul_(t).mul_(-2.0 / self.n)  # d loss / d score
        return loss, G.T @ X, G.sum(0)  # G.T @ X, not X.T @ G: see _Problem.data_terms

    def penalty(self, W, b, reg):
        penalty = W.double().square().sum() + b.double().square().sum()
        return 0.5 * reg * penalty, reg * W, reg * b


class TorchLinearSVC(TorchLinearClassifier):
    """liblinear's default ``LinearSVC`` objective (squared hinge, L2, one-vs-rest, penalised
    intercept), fitted by L-BFGS in torch. Parameters as :class:`TorchLinearClassifier`;
    ``tol`` bounds max |gradient| of the objective divided by ``C * n``."""

    _problem = _HingeProblem
    _what = "A linear SVM"


def linear_svm_path(X: np.ndarray, y: np.ndarray, Cs: Sequence[float], **kwargs) -> LinearPath:
    """Fit every C in ``Cs`` in order, each warm-started from the previous solution; the same
    keywords as :func:`featpipe.heads.logreg_path`."""
    return linear_path(TorchLinearSVC, X, y, Cs, **kwargs)
