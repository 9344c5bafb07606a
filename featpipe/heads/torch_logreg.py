"""L2 logistic regression by full-batch L-BFGS in torch, and its warm-started C path.

The objective is exactly scikit-learn's ``LogisticRegression(C=C)`` (L2, lbfgs):

    C * sum_i log_loss(x_i, y_i) + 0.5 * ||W||^2      (intercept not penalised)

multinomial for K > 2 classes, binomial for two (one weight row: the logit of the second
class, as scikit-learn fits it; a symmetric two-row multinomial would halve the penalty and
make ``C`` mean ``2C``). It is minimised, as scikit-learn does, in the scaled form
``mean_i log_loss + ||W||^2 / (2 C n)`` so that ``tol`` means the same thing (max |gradient| of
the scaled objective). Training runs in float32 on CPU (all threads) or CUDA; the fitted
coefficients are float64 numpy arrays and prediction is plain numpy, so a fitted model behaves
and pickles like any scikit-learn linear classifier (two classes: ``coef_`` of shape (1, D)).

The solver, the estimator base and the C path are shared with the linear SVM
(``torch_svm.py``), which only swaps the objective (``_Problem.loss_and_grad``).
"""

from __future__ import annotations

import math
import numbers
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import expit, log_softmax, softmax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from featpipe.device import available_cores, on_device, resolve_device, torch_threads
from featpipe.distributed.progress import progress_bar
from featpipe.errors import ConfigError, TrainingDivergedError
from featpipe.evaluate.metrics import clearly_below
from featpipe.heads.finite import check_finite
from featpipe.validation import is_count


def logistic_objective(
    X: np.ndarray, y: np.ndarray, coef: np.ndarray, intercept: np.ndarray, C: float
) -> float:
    """scikit-learn's objective ``C * sum log_loss + 0.5 ||W||^2`` in float64.

    ``y`` holds class indices 0..K-1. ``coef`` is (K, D) (multinomial), or (1, D) for two
    classes in scikit-learn's binary layout (the logit of class 1; binomial log-loss).
    """
    coef, intercept = np.asarray(coef, np.float64), np.asarray(intercept, np.float64)
    logits = np.asarray(X, np.float64) @ coef.T + intercept
    if coef.shape[0] == 1:  # binomial: class 0 is the reference with logit 0
        logits = np.column_stack([np.zeros(len(logits)), logits])
    ce = -log_softmax(logits, axis=1)[np.arange(len(y)), y]
    return float(C * ce.sum() + 0.5 * np.sum(coef**2))


class _Problem:
    """Training rows on one device, and an L-BFGS minimiser of the scaled objective.

    Weights are (K, D+1) with the intercept in the last column; for two classes one row (the
    logit of class 1, class 0's logit fixed at 0), which makes the objective scikit-learn's
    binomial one. The objective is a sum over the row batches of :meth:`batches` (here one:
    every row), combined by :meth:`reduce`, so a subclass can stream the rows from a store
    and sum over processes (``streamed_logreg.py``) with the same arithmetic."""

    def __init__(self, X: np.ndarray, y_idx: np.ndarray, n_classes: int, device: torch.device):
        self.X = torch.as_tensor(np.ascontiguousarray(X, np.float32), device=device)
        self.y = torch.as_tensor(y_idx, dtype=torch.long, device=device)
        self._shape(len(y_idx), self.X.shape[1], n_classes, device)

    def _shape(self, n: int, dim: int, n_classes: int, device: torch.device) -> None:
        self.n, self.dim, self.device = n, dim, device
        self.rows = 1 if n_classes == 2 else n_classes

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The (X, class index) batches whose rows make up the objective."""
        yield self.X, self.y

    def reduce(self, total: torch.Tensor) -> torch.Tensor:
        """The flat (loss, dW, db) sums over every process's rows; here this process's."""
        return total

    def zeros(self) -> torch.Tensor:
        return torch.zeros(self.rows, self.dim + 1, device=self.device)

    def logits(self, X: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(n, K) logits; in the binomial case with the reference class's zeros in front."""
        z = F.linear(X, W, b)
        return torch.cat([torch.zeros_like(z), z], dim=1) if self.rows == 1 else z

    def data_terms(
        self, X: torch.Tensor, y: torch.Tensor, W: torch.Tensor, b: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The rows' share of the data term ``sum_i log_loss_i / n`` (float64) and of its
        gradients in W and b (float32).

        The gradient is written by hand rather than by autograd, whose backward of the weights
        computes X.T @ G: several times slower than (G.T @ X) on CPU, for one pass."""
        index = torch.arange(len(y), device=X.device)
        log_p = self.logits(X, W, b).log_softmax(1)
        # The loss in float64: at float32's resolution (~1e-7 of its value) the line search
        # sees no decrease and stops long before tol. The gradient stays float32.
        loss = -log_p[index, y].double().sum() / self.n
        residual = log_p.exp_()
        residual[index, y] -= 1.0
        residual = residual[:, -self.rows :] / self.n  # the reference class has no weights
        return loss, residual.T @ X, residual.sum(0)

    def penalty(
        self, W: torch.Tensor, b: torch.Tensor, reg: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The L2 penalty (the intercept is not penalised) and its gradients in W and b."""
        return 0.5 * reg * W.double().square().sum(), reg * W, torch.zeros_like(b)

    def loss_and_grad(self, W: torch.Tensor, b: torch.Tensor, reg: float) -> torch.Tensor:
        """The scaled objective at (W, b) in float64, with its gradient written to ``.grad``."""
        loss, gW, gb = None, None, None
        for X, y in self.batches():
            part = self.data_terms(X, y, W, b)
            if loss is None:
                loss, gW, gb = part
            else:  # several batches: sum the gradients in float64
                loss, gW, gb = loss + part[0], gW.double() + part[1], gb.double() + part[2]
        if loss is None:  # a process with no rows of its own
            loss = torch.zeros((), dtype=torch.float64, device=W.device)
            gW, gb = torch.zeros_like(W), torch.zeros_like(b)
        flat = self.reduce(torch.cat([loss.reshape(1), gW.double().ravel(), gb.double()]))
        loss = flat[0].to(W.device)
        gW = flat[1 : 1 + W.numel()].view_as(W).to(W)
        gb = flat[1 + W.numel() :].to(b)
        p, pW, pb = self.penalty(W, b, reg)
        W.grad, b.grad = gW + pW, gb + pb
        return loss + p

    def minimise(
        self, C: float, start: torch.Tensor, tol: float, max_iter: int, halve: bool = True
    ) -> tuple[torch.Tensor, int, float]:
        """The weights, the iterations used and the final max |gradient| (compare to tol).

        L-BFGS stops at max |gradient| <= tol, and (``halve``) also not before it has halved
        the gradient it started from: a warm start (the previous C's solution on a path) can
        already be below tol, because the scaled gradient shrinks like 1/C; at large C it would
        stop there with 0 iterations, its objective percents above the optimum and a cold
        fit's. Without ``halve`` it stops at tol alone, as scikit-learn's warm starts do."""
        W = start[:, :-1].clone().requires_grad_(True)  # contiguous, so matmuls stay fast
        b = start[:, -1].clone().requires_grad_(True)
        reg = 1.0 / (C * self.n)

        @torch.no_grad()
        def closure() -> torch.Tensor:
            return self.loss_and_grad(W, b, reg)

        closure()
        opt = torch.optim.LBFGS(
            [W, b],
            lr=1.0,
            max_iter=max_iter,
            tolerance_grad=min(tol, _START_GRADIENT_SHARE * _max_abs_grad(W, b)) if halve else tol,
            tolerance_change=1e-14,
            history_size=20,
            line_search_fn="strong_wolfe",
        )
        try:
            opt.step(closure)
        except RuntimeError as exc:
            if "overflow" not in str(exc):  # out of memory, a lost rank...
                raise
            raise self._diverged(C) from exc  # a step length of NaN or inf
        n_iter = int(opt.state[W].get("n_iter", 0))  # LBFGS keeps its state on the first param
        # LBFGS also stops on tolerance_change or a failed line search, and its last closure
        # call may be a rejected trial point: evaluate the gradient where it stopped.
        closure()
        if not (torch.isfinite(W).all() and torch.isfinite(b).all()):
            raise self._diverged(C)  # NaN weights would predict one class for every row
        grad = _max_abs_grad(W, b)
        return torch.cat([W.detach(), b.detach()[:, None]], dim=1), n_iter, grad

    def _diverged(self, C: float) -> TrainingDivergedError:
        X = getattr(self, "X", None)  # a streamed problem holds no rows
        reach = f" (|x| up to {X.abs().max().item():.3g})" if X is not None else ""
        return TrainingDivergedError(
            f"L-BFGS diverged at C={C:g}: its weights became NaN or infinite in float32, "
            f"because the features are too large in magnitude{reach}. Standardise them "
            "(preprocess='standardize', the default of the probe heads) or scale them down."
        )

    def accuracy(self, W: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> float:
        logits = self.logits(X, W[:, :-1], W[:, -1])
        return (logits.argmax(1) == y).sum().item() / len(y)


_START_GRADIENT_SHARE = 0.5  # a fit ends below this share of its starting max |gradient|
# Multiply-adds of one pass over the rows (rows x features x weight rows) per CPU thread.
_MACS_PER_THREAD = 2**24
_PAST_PEAK_FITS = 3  # C values clearly below the best validation accuracy that end the peak


def _max_abs_grad(W: torch.Tensor, b: torch.Tensor) -> float:
    return max(W.grad.abs().max().item(), b.grad.abs().max().item())


def solver_threads(n_threads: int | None, n: int, dim: int, n_classes: int) -> int:
    """The torch CPU threads for an L-BFGS fit on ``n`` rows of ``dim`` features: ``n_threads``
    when given, else one per ``_MACS_PER_THREAD`` multiply-adds of a pass, at most one per core.

    A smaller pass takes a few milliseconds on one core, about a scheduler time slice: each of
    its ops then waits at a barrier for a second thread, which on a busy machine waits for a
    core. The C path of 34 x 1280 rows in 3 classes (a probe's CV fold) took 247 s on 2 threads
    of a loaded 2-core CPU against 8.8 s on one (benchmarks/README.md)."""
    if n_threads:
        return int(n_threads)
    rows = 1 if n_classes == 2 else n_classes
    return max(1, min(available_cores(), n * dim * rows // _MACS_PER_THREAD))


def _sklearn_layout(W: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(coef_, intercept_) as float64 numpy arrays."""
    W = W.double().cpu().numpy()
    return W[:, :-1].copy(), W[:, -1].copy()


def _warn_not_converged(fits: list[tuple[float, int, float]], max_iter: int, tol: float) -> None:
    """One warning for the fits, as (C, iterations, final max |gradient|), that stopped above
    tol, whichever criterion stopped L-BFGS (max_iter, tolerance_change, a failed line
    search)."""
    bad = [
        f"C={C:g}: {grad:.2g} after {n_iter} iterations" for C, n_iter, grad in fits if grad > tol
    ]
    if bad:
        of = f" for {len(bad)} of {len(fits)} values of C" if len(fits) > 1 else ""
        warnings.warn(
            f"L-BFGS stopped with max |gradient| above tol={tol:g}{of} ({'; '.join(bad)}; "
            f"max_iter={max_iter}): the solution has not converged. Standardise the features, "
            "raise max_iter, or raise tol (in float32 it rarely gets below 1e-6, nor much below "
            "1e-4 under very strong regularisation).",
            ConvergenceWarning,
            stacklevel=3,
        )


def check_C(C: object, where: str = "") -> None:
    """One error for a bad C, whether a plain fit's or one of a path's (``where`` says which)."""
    if isinstance(C, bool) or not (isinstance(C, numbers.Real) and np.isfinite(C) and C > 0):
        raise ConfigError(
            f"C must be a positive finite number; got {C!r}{where}. C is the inverse "
            "regularisation strength: use e.g. 1.0, smaller to regularise more."
        )


def _check_Cs(Cs: Sequence[float], what: str) -> None:
    """Every C of a path, before any is fitted (a bad one would fail mid-path)."""
    if len(Cs) == 0:
        raise ConfigError(f"The C path of {what} needs at least one C value.")
    for i, C in enumerate(Cs):
        check_C(C, f" (value {i + 1} of {len(Cs)} of the C path)")


class TorchLinearClassifier(ClassifierMixin, BaseEstimator):
    """An L2-regularised linear classifier fitted by full-batch L-BFGS in torch (float32, CPU
    or CUDA); subclasses name the objective (``_problem``).

    Parameters
    ----------
    C : inverse regularisation strength, as in scikit-learn.
    tol : stop when max |gradient| of the scaled objective falls below it.
    max_iter : most L-BFGS iterations.
    device : ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
    n_threads : CPU threads for torch (None: by the problem's size, see :func:`solver_threads`).
    warm_start : start from the previous fit's solution (same classes and features).
    """

    _problem: type[_Problem] = _Problem
    _what = "Logistic regression"  # for error messages

    def __init__(
        self,
        C: float = 1.0,
        *,
        tol: float = 1e-4,
        max_iter: int = 1000,
        device: str = "auto",
        n_threads: int | None = None,
        warm_start: bool = False,
    ):
        self.C = C
        self.tol = tol
        self.max_iter = max_iter
        self.device = device
        self.n_threads = n_threads
        self.warm_start = warm_start

    def _check_params(self) -> None:
        check_C(self.C)
        if not (self.tol >= 0 and is_count(self.max_iter)):  # NaN tol; int() cut 2.5 to 2
            raise ConfigError(
                f"tol must be >= 0 and max_iter >= 1 (a whole number); got tol={self.tol!r}, "
                f"max_iter={self.max_iter!r}."
            )

    def fit(self, X, y) -> TorchLinearClassifier:
        self._check_params()
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        classes, y_idx = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ConfigError(
                f"{self._what} needs samples of at least 2 classes; got 1 class "
                f"({classes[0]!r}). Check the labels of the training split."
            )
        device = resolve_device(self.device)
        threads = solver_threads(self.n_threads, *X.shape, len(classes))
        with on_device(device), torch_threads(threads):
            problem = self._problem(X, y_idx, len(classes), device)
            start = problem.zeros()
            # A previous solution is a start only for the same classes and features.
            if (
                self.warm_start
                and hasattr(self, "coef_")
                and np.array_equal(self.classes_, classes)
                and self.coef_.shape[1] == X.shape[1]
            ):
                start = torch.as_tensor(
                    np.column_stack([self.coef_, self.intercept_]),
                    dtype=torch.float32,
                    device=device,
                )
            W, n_iter, grad = problem.minimise(float(self.C), start, self.tol, int(self.max_iter))
        _warn_not_converged([(self.C, n_iter, grad)], int(self.max_iter), self.tol)
        self.classes_ = classes
        self.coef_, self.intercept_ = _sklearn_layout(W)
        self.n_iter_ = np.array([n_iter])
        return self

    def decision_function(self, X) -> np.ndarray:
        """Scores (n, K), or the score of the second class (n,) for two classes."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        scores = X @ self.coef_.T + self.intercept_
        return scores.ravel() if scores.shape[1] == 1 else scores

    def predict(self, X) -> np.ndarray:
        scores = self.decision_function(X)
        index = (scores > 0).astype(int) if scores.ndim == 1 else scores.argmax(axis=1)
        return self.classes_[index]


class TorchLogisticRegression(TorchLinearClassifier):
    """scikit-learn's L2 multinomial ``LogisticRegression`` objective, fitted by full-batch
    L-BFGS in torch (float32, CPU or CUDA). Parameters as :class:`TorchLinearClassifier`."""

    def predict_proba(self, X) -> np.ndarray:
        scores = self.decision_function(X)
        if scores.ndim == 1:
            p1 = expit(scores)
            return np.column_stack([1 - p1, p1])
        return softmax(scores, axis=1)

    def predict_log_proba(self, X) -> np.ndarray:
        return np.log(self.predict_proba(X))


@dataclass
class LinearPath:
    """Solutions along a C path, in the order fitted, with validation accuracy when asked."""

    Cs: np.ndarray
    classes: np.ndarray
    coefs: list[np.ndarray]
    intercepts: list[np.ndarray]
    n_iter: list[int]
    val_accuracy: np.ndarray | None
    seconds: float
    estimator_class: type[TorchLinearClassifier] = TorchLogisticRegression
    val_log_loss: list[float] | None = None  # of the Cs tied at the best accuracy, else NaN

    @property
    def best_index(self) -> int:
        """Index of the highest validation accuracy; a tie goes to the lowest validation log
        loss (logistic regression), then to the smaller C: selection's rule."""
        from featpipe.heads.selection import best_candidate  # late: selection imports the heads

        if self.val_accuracy is None:
            raise ConfigError("This path was fitted without validation data; pass X_val, y_val.")
        return best_candidate(self.val_accuracy, self.val_log_loss)

    def estimator(self, index: int, **params) -> TorchLinearClassifier:
        """A fitted estimator (``estimator_class``) holding the solution at ``index``."""
        est = self.estimator_class(C=float(self.Cs[index]), **params)
        est.classes_ = self.classes
        est.coef_, est.intercept_ = self.coefs[index].copy(), self.intercepts[index].copy()
        est.n_iter_ = np.array([self.n_iter[index]])
        est.n_features_in_ = est.coef_.shape[1]
        return est


LogRegPath = LinearPath  # the name it was published under


def logreg_path(X: np.ndarray, y: np.ndarray, Cs: Sequence[float], **kwargs) -> LinearPath:
    """The warm-started C path of the logistic regression; keywords as :func:`linear_path`."""
    return linear_path(TorchLogisticRegression, X, y, Cs, **kwargs)


def linear_path(
    estimator_class: type[TorchLinearClassifier],
    X: np.ndarray,
    y: np.ndarray,
    Cs: Sequence[float],
    *,
    X_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    tol: float = 1e-4,
    max_iter: int = 1000,
    device: str = "auto",
    n_threads: int | None = None,
    progress: bool = False,
) -> LinearPath:
    """Fit ``estimator_class``'s objective at every C in ``Cs`` in order, each warm-started from
    the previous solution.

    Pass ``Cs`` in increasing order (strong to weak regularisation): each solution is then a
    good start for the next. With ``X_val``/``y_val`` the validation accuracy of each solution
    is recorded (labels in ``y_val`` that never occur in ``y`` count as errors), and the log
    loss of those tied at the best accuracy (logistic regression), for ``best_index``.
    """
    what = estimator_class._what
    _check_Cs(Cs, what)
    X = np.asarray(X)
    check_finite(X, "training")
    if X_val is not None:
        check_finite(X_val, "validation")
    classes, y_idx = np.unique(np.asarray(y), return_inverse=True)
    if len(classes) < 2:
        raise ConfigError(f"{what} needs at least 2 classes; got {list(classes)}.")
    torch_device = resolve_device(device)
    threads = solver_threads(n_threads, *X.shape, len(classes))
    with on_device(torch_device), torch_threads(threads):
        problem = estimator_class._problem(X, y_idx, len(classes), torch_device)
        accuracy = None
        if X_val is not None and y_val is not None:
            pos = {c: i for i, c in enumerate(classes.tolist())}
            yv = np.array([pos.get(c, -1) for c in np.asarray(y_val).tolist()])
            val = (
                torch.as_tensor(np.ascontiguousarray(X_val, np.float32), device=torch_device),
                torch.as_tensor(yv, dtype=torch.long, device=torch_device),
            )
            accuracy = partial(problem.accuracy, X=val[0], y=val[1])
        path = run_path(
            problem, Cs, classes, estimator_class, accuracy, tol=tol, max_iter=max_iter,
            progress=progress_bar(len(Cs), desc="C path", unit="C", enabled=progress),
            n_val=None if accuracy is None else len(yv),
        )  # fmt: skip
    if accuracy is not None:
        from featpipe.heads.selection import tied_log_loss, val_log_loss  # late, as best_index

        path.val_log_loss = tied_log_loss(
            estimator_class,
            path.val_accuracy,
            lambda i: val_log_loss(path.estimator(i), X_val, y_val),
        )
    return path


def run_path(
    problem: _Problem,
    Cs: Sequence[float],
    classes: np.ndarray,
    estimator_class: type[TorchLinearClassifier],
    accuracy: Callable[[torch.Tensor], float] | None,
    *,
    tol: float,
    max_iter: int,
    progress,
    n_val: int | None = None,
) -> LinearPath:
    """Minimise ``problem`` at every C in ``Cs`` in order, each from the previous solution,
    recording ``accuracy(W)`` of each solution when given; ``progress`` (a tqdm-like
    counter) counts the values of C.

    Given ``n_val`` (the rows ``accuracy`` counts), once the validation accuracy has been
    clearly below its best for ``_PAST_PEAK_FITS`` C values in a row, the path is past its
    peak: the remaining C values stop at ``tol`` alone, as scikit-learn's warm starts do,
    instead of also halving their gradient. Such fits can stay at the previous C's weights,
    whose accuracy is already clearly below the best, so they cannot be chosen, and the
    gradient halving (about 3x the path's time on CIFAR-10 features) goes only to the C
    values that can be."""
    _check_Cs(Cs, estimator_class._what)
    coefs, intercepts, iters, accs, fits = [], [], [], [], []
    W = problem.zeros()
    best, below = -math.inf, 0
    start = time.perf_counter()
    with progress:
        for C in Cs:
            halve = n_val is None or below < _PAST_PEAK_FITS
            W, n_iter, grad = problem.minimise(float(C), W, tol, max_iter, halve=halve)
            fits.append((C, n_iter, grad))
            coef, intercept = _sklearn_layout(W)
            coefs.append(coef)
            intercepts.append(intercept)
            iters.append(n_iter)
            if accuracy is not None:
                accs.append(accuracy(W))
                if halve and n_val:
                    best = max(best, accs[-1])
                    below = below + 1 if clearly_below(accs[-1], best, n_val) else 0
            progress.update(1)
    if problem.device.type == "cuda":
        torch.cuda.synchronize(problem.device)
    seconds = time.perf_counter() - start
    _warn_not_converged(fits, max_iter, tol)
    return LinearPath(
        Cs=np.asarray(Cs, dtype=np.float64),
        classes=classes,
        coefs=coefs,
        intercepts=intercepts,
        n_iter=iters,
        val_accuracy=np.asarray(accs) if accuracy is not None else None,
        seconds=seconds,
        estimator_class=estimator_class,
    )
