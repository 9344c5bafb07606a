"""A multilayer perceptron head in torch: scikit-learn's ``MLPClassifier`` recipe on CPU or CUDA.

ReLU hidden layers (one of 100 units by default), a softmax output, cross-entropy plus
``0.5 * alpha * ||W||^2 / batch`` (weights, not biases), Glorot-uniform initialisation, Adam,
shuffled minibatches of ``min(200, n)`` rows, and scikit-learn's stopping rule:
``n_iter_no_change`` epochs without an improvement of at least ``tol``, in accuracy on an
internal stratified validation fraction (``early_stopping=True``, the default; the best epoch's
weights are kept) or in training loss. Two differences by default:

- The patience (``n_iter_no_change="auto"``) is counted in Adam steps, not epochs, as the epochs
  that make :data:`PATIENCE_STEPS` steps (2 to 10). scikit-learn's 10 epochs are 70 steps on
  1,500 rows but 2,000 on 45,000; on 8,100 rows of CIFAR-10 features the validation accuracy
  was on its plateau after 2 or 3 epochs, and most of such a fit is spent waiting. After the
  rate is first lowered (below) it is half that (:func:`decayed_patience`).
- The learning rate drops at a plateau (``lr_schedule="plateau"``): the first time the stopping
  rule is met, training goes back to the best epoch's weights and goes on at a fifth of the
  rate, twice, and stops at the third plateau. scikit-learn's constant rate stops at the first
  one (``lr_schedule="constant"``). On CIFAR-10 features (45,000 rows) the plateau schedule
  with the short patience reached a higher validation accuracy in about half the epochs of
  scikit-learn's rule: the constant rate's validation accuracy swings by a point from epoch to
  epoch, and a lower rate settles it.

Models for several values of ``alpha`` train side by side in one set of batched tensors
(:func:`mlp_path`): with the same ``random_state`` they share initial weights, validation split
and batch order, so each one is the model a fit with that alpha alone gives, and a finished
model leaves the batch. Their first layers, where the time goes, are one matrix product over
the shared input rows. Training keeps float32 weights and Adam state, with a hand-written
backward pass. ``precision="auto"`` runs the first layer's two matrix products (forward and
weight gradient) in bfloat16 where the hardware multiplies bfloat16 natively (CPUs with
AVX512-BF16 or AMX, Ampere and later GPUs): about 2x the float32 rate on an AVX-512 CPU, at
no loss of validation accuracy on CIFAR-10 features (``benchmarks/README.md``); elsewhere, and
with ``precision="fp32"``, everything is float32. The fitted weights are float64 numpy arrays
(``coefs_``, ``intercepts_``, laid out as scikit-learn's) and prediction is plain numpy.
Results are deterministic given ``random_state`` and the precision on CPU.
"""

from __future__ import annotations

import itertools
import numbers
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import softmax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from featpipe.device import on_device, resolve_device, torch_threads
from featpipe.errors import ConfigError
from featpipe.heads.torch_logreg import solver_threads
from featpipe.validation import is_count

PATIENCE_STEPS = 100  # n_iter_no_change="auto": stop after about this many steps without gain
PRECISIONS = ("auto", "fp32", "bf16")
LR_SCHEDULES = ("plateau", "constant")
PLATEAU_FACTOR = 5.0  # lr_schedule="plateau": divide the rate by this (scikit-learn's "adaptive")
PLATEAU_DECAYS = 2  # ... this many times, then stop at the next plateau


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices in hardware (where emulation would make
    bf16 slower than float32)."""
    if device.type == "cuda":
        with torch.cuda.device(device):
            return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def matmul_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The dtype of the first layer's matrix products for ``precision`` on ``device``."""
    if precision == "bf16" or (precision == "auto" and native_bf16(device)):
        return torch.bfloat16
    return torch.float32


def decayed_patience(patience: int) -> int:
    """``n_iter_no_change="auto"``'s patience once the rate has been lowered: half the first
    one, at least 2 epochs. At a fifth of the rate the validation accuracy swings less, so a
    plateau shows sooner; the full wait made three plateaus cost 41-44 epochs on 1,500 rows."""
    return max(2, -(-patience // 2))


def patience_epochs(n_iter_no_change: int | str, steps_per_epoch: int) -> int:
    """The patience in epochs: ``n_iter_no_change`` itself, or for ``"auto"`` the epochs
    that make :data:`PATIENCE_STEPS` optimiser steps, between 2 and scikit-learn's 10."""
    if n_iter_no_change != "auto":
        return int(n_iter_no_change)
    return int(np.clip(np.ceil(PATIENCE_STEPS / steps_per_epoch), 2, 10))


class TorchMLPClassifier(ClassifierMixin, BaseEstimator):
    """scikit-learn's ``MLPClassifier`` (ReLU, Adam) trained in torch, early stopping on by
    default.

    Parameters
    ----------
    hidden_layer_sizes : units of each hidden layer.
    alpha : L2 penalty on the weights, as in scikit-learn.
    batch_size : rows per Adam step; ``"auto"`` is ``min(200, n)``.
    learning_rate_init : Adam's (constant) learning rate.
    max_iter : most epochs.
    tol, n_iter_no_change : stop after ``n_iter_no_change`` epochs that did not improve the
        validation accuracy (or, without early stopping, the training loss) by ``tol``.
        ``"auto"``: the epochs that make ``PATIENCE_STEPS`` Adam steps, between 2 and 10
        (``n_iter_no_change_`` says what was used), and half that, at least 2, once the
        plateau schedule has lowered the rate.
    early_stopping : hold out ``validation_fraction`` of the training rows (stratified) to
        stop on and keep the best epoch's weights. Needs at least 2 rows of every class and a
        held-out share of at least one row per class; with fewer (few-shot sets) training stops
        on the training loss instead, and ``validation_scores_`` is None.
    random_state : seeds initial weights, validation split and batch order: an int, a
        ``np.random.RandomState`` (one seed is drawn from it) or None (a fresh seed each fit).
    device : ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
    n_threads : CPU threads for torch (None: by the size of a step, as
        :func:`~featpipe.heads.torch_logreg.solver_threads` chooses).
    precision : ``"auto"`` (bfloat16 first-layer products where the device has native
        bfloat16, else float32), ``"fp32"`` or ``"bf16"``; ``precision_`` says what was used.
    lr_schedule : ``"plateau"`` (the default): when the stopping rule is met, go back to the
        best epoch's weights and divide the learning rate by :data:`PLATEAU_FACTOR`, up to
        :data:`PLATEAU_DECAYS` times, and stop at the plateau after that (``lr_decays_``
        counts them). ``"constant"``: scikit-learn's Adam, which stops at the first plateau.
    """

    def __init__(
        self,
        hidden_layer_sizes: tuple[int, ...] = (100,),
        *,
        alpha: float = 1e-4,
        batch_size: int | str = "auto",
        learning_rate_init: float = 1e-3,
        max_iter: int = 200,
        tol: float = 1e-4,
        n_iter_no_change: int | str = "auto",
        early_stopping: bool = True,
        validation_fraction: float = 0.1,
        random_state: int = 0,
        device: str = "auto",
        n_threads: int | None = None,
        precision: str = "auto",
        lr_schedule: str = "plateau",
    ):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.max_iter = max_iter
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.random_state = random_state
        self.device = device
        self.n_threads = n_threads
        self.precision = precision
        self.lr_schedule = lr_schedule

    def fit(self, X, y) -> TorchMLPClassifier:
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        (model,) = _fit_many(self, X, y, [self.alpha])
        for name, value in vars(model).items():
            if name.endswith("_") and not name.startswith("_"):
                setattr(self, name, value)
        return self

    def _scores(self, X) -> np.ndarray:
        check_is_fitted(self)
        h = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        for i, (W, b) in enumerate(zip(self.coefs_, self.intercepts_, strict=True)):
            h = h @ W + b
            if i < len(self.coefs_) - 1:
                h = np.maximum(h, 0.0)
        return h

    def predict(self, X) -> np.ndarray:
        index = self._scores(X).argmax(axis=1)  # checks fitted first
        return self.classes_[index]

    def predict_proba(self, X) -> np.ndarray:
        return softmax(self._scores(X), axis=1)

    def predict_log_proba(self, X) -> np.ndarray:
        return np.log(self.predict_proba(X))


@dataclass
class MLPPath:
    """One fitted model per alpha, with the accuracy of each on the validation rows given."""

    alphas: np.ndarray
    estimators: list[TorchMLPClassifier]
    val_accuracy: np.ndarray | None
    seconds: float
    val_log_loss: list[float] | None = None  # of the alphas tied at the best accuracy, else NaN

    @property
    def best_index(self) -> int:
        """Index of the highest validation accuracy; a tie goes to the lowest validation log
        loss, then to the smaller alpha: selection's rule."""
        from featpipe.heads.selection import best_candidate  # late: selection imports the heads

        if self.val_accuracy is None:
            raise ConfigError("This path was fitted without validation data; pass X_val, y_val.")
        return best_candidate(self.val_accuracy, self.val_log_loss)


def mlp_path(
    X: np.ndarray,
    y: np.ndarray,
    alphas: Sequence[float],
    *,
    X_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    **params,
) -> MLPPath:
    """Train one model per alpha side by side (see the module docstring); ``params`` are
    :class:`TorchMLPClassifier`'s other parameters. With ``X_val``/``y_val`` each model's
    accuracy there is recorded, and the log loss of those tied at the best accuracy, for
    ``best_index`` (early stopping still uses the internal split of ``X``)."""
    if len(alphas) == 0:
        raise ConfigError("mlp_path needs at least one alpha.")
    template = TorchMLPClassifier(**params)
    X, y = validate_data(template, X, y, dtype=[np.float64, np.float32])
    check_classification_targets(y)
    start = time.perf_counter()
    models = _fit_many(template, X, y, [float(a) for a in alphas])
    seconds = time.perf_counter() - start
    path = MLPPath(np.asarray(alphas, np.float64), models, None, seconds)
    if X_val is not None and y_val is not None:
        from featpipe.heads.selection import tied_log_loss, val_log_loss  # late, as best_index

        path.val_accuracy = np.array([m.score(X_val, y_val) for m in models])
        path.val_log_loss = tied_log_loss(
            TorchMLPClassifier,
            path.val_accuracy,
            lambda i: val_log_loss(models[i], X_val, y_val),
        )
    return path


def _check_params(p: TorchMLPClassifier, alphas: list[float]) -> list[int]:
    sizes = [p.hidden_layer_sizes] if np.isscalar(p.hidden_layer_sizes) else p.hidden_layer_sizes
    bad = []
    if not all(is_count(s) for s in sizes):  # int() made (2.5,) a layer of 2 units
        bad.append(
            f"hidden_layer_sizes must be positive whole numbers; got {p.hidden_layer_sizes!r}"
        )
    if not all(np.isfinite(a) and a >= 0 for a in alphas):
        bad.append(f"alpha must be >= 0 and finite; got {alphas}")
    batch = p.batch_size
    if not (batch == "auto" or (isinstance(batch, numbers.Integral) and batch >= 1)):
        bad.append(f"batch_size must be 'auto' or a positive integer; got {p.batch_size!r}")
    if not (p.learning_rate_init > 0 and is_count(p.max_iter) and p.tol >= 0):
        bad.append(
            "learning_rate_init must be > 0, max_iter >= 1 (a whole number) and tol >= 0; got "
            f"{p.learning_rate_init!r}, {p.max_iter!r}, {p.tol!r}"
        )
    patience = p.n_iter_no_change
    if not (patience == "auto" if isinstance(patience, str) else is_count(patience)):
        bad.append(f"n_iter_no_change must be 'auto' or >= 1; got {patience!r}")
    if p.precision not in PRECISIONS:
        bad.append(f"precision must be one of {', '.join(PRECISIONS)}; got {p.precision!r}")
    if p.lr_schedule not in LR_SCHEDULES:
        bad.append(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}; got {p.lr_schedule!r}")
    if not 0 < p.validation_fraction < 1:
        bad.append(f"validation_fraction must be in (0, 1); got {p.validation_fraction}")
    try:
        check_random_state(p.random_state)
    except ValueError:
        bad.append(
            f"random_state must be None, an int or a np.random.RandomState; got {p.random_state!r}"
        )
    if bad:
        raise ConfigError("TorchMLPClassifier: " + "; ".join(bad) + ".")
    return [int(s) for s in sizes]


def _seed(random_state: object) -> int:
    """An int seed for torch and the split: an int as given (the same fits as ever), else one
    drawn as scikit-learn does (None: a fresh one each fit)."""
    if isinstance(random_state, numbers.Integral):
        return int(random_state)
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


def _early_stopping_split(
    p: TorchMLPClassifier, X: np.ndarray, y_idx: np.ndarray, k: int, seed: int
):
    """(X_train, y_train, X_val, y_val), the last two None when there is no early stopping."""
    if p.early_stopping:
        n_val = int(np.ceil(p.validation_fraction * len(y_idx)))
        if np.bincount(y_idx).min() >= 2 and k <= n_val <= len(y_idx) - k:
            X_tr, X_va, y_tr, y_va = train_test_split(
                X,
                y_idx,
                test_size=p.validation_fraction,
                stratify=y_idx,
                random_state=seed,
            )
            return X_tr, y_tr, X_va, y_va
    return X, y_idx, None, None


def _batch_rows(p: TorchMLPClassifier, n: int) -> int:
    """Rows of one Adam step on ``n`` training rows (``"auto"``: scikit-learn's 200)."""
    return min(200, n) if p.batch_size == "auto" else min(int(p.batch_size), n)


def _fit_many(
    p: TorchMLPClassifier, X: np.ndarray, y: np.ndarray, alphas: list[float]
) -> list[TorchMLPClassifier]:
    """One fitted TorchMLPClassifier per alpha, all trained in one batched loop."""
    hidden = _check_params(p, alphas)
    classes, y_idx = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise ConfigError(
            f"An MLP needs samples of at least 2 classes; got 1 class ({classes[0]!r}). "
            "Check the labels of the training split."
        )
    seed = _seed(p.random_state)  # one seed for the split and the weights
    X_tr, y_tr, X_va, y_va = _early_stopping_split(p, X, y_idx, len(classes), seed)
    device = resolve_device(p.device)
    widths = [X.shape[1], *hidden, len(classes)]
    # Threads by the largest matrix product of one step (every alpha's batch through the
    # widest layer), as the L-BFGS heads choose theirs: a small step runs best on one thread.
    step_rows = _batch_rows(p, len(y_tr)) * len(alphas)
    fan_in, fan_out = max(itertools.pairwise(widths), key=lambda w: w[0] * w[1])
    threads = solver_threads(p.n_threads, step_rows, fan_in, fan_out)
    with on_device(device), torch_threads(threads):
        trainer = _Trainer(p, widths, alphas, device, seed)
        fits = trainer.run(X_tr, y_tr, X_va, y_va)
    models = []
    for alpha, fit in zip(alphas, fits, strict=True):
        model = TorchMLPClassifier(**{**p.get_params(), "alpha": alpha})
        model.classes_ = classes
        model.n_features_in_ = X.shape[1]
        model.coefs_ = [W.double().cpu().numpy() for W in fit.weights]
        model.intercepts_ = [b.double().cpu().numpy() for b in fit.biases]
        model.n_iter_ = fit.n_iter
        model.n_iter_no_change_ = trainer.patience
        model.precision_ = "bf16" if trainer.low == torch.bfloat16 else "fp32"
        model.lr_decays_ = fit.decays
        model.loss_curve_ = fit.losses
        model.validation_scores_ = fit.scores if X_va is not None else None
        model.best_validation_score_ = max(fit.scores) if X_va is not None else None
        models.append(model)
    late = [f"alpha={a:g}" for a, f in zip(alphas, fits, strict=True) if not f.stopped]
    if late:
        warnings.warn(
            f"The MLP ({', '.join(late)}) reached max_iter={p.max_iter} epochs without "
            "meeting its stopping rule; raise max_iter or tol.",
            ConvergenceWarning,
            stacklevel=3,
        )
    return models


@dataclass
class _Fit:
    """One model's record: its kept weights, epochs run, curves and whether it stopped."""

    weights: list[torch.Tensor]
    biases: list[torch.Tensor]
    n_iter: int = 0
    losses: list[float] | None = None
    scores: list[float] | None = None
    stopped: bool = False
    decays: int = 0  # of its learning rate, at plateaus


class _Trainer:
    """Models (one per alpha) of the same architecture as one stack of weights, trained with a
    hand-written backward pass (autograd's backward of the L2 term alone cost a fifth of a step).

    The first layer holds every model's weights side by side, (fan_in, A, fan_out) with biases
    (A, fan_out): the input rows are shared, so its forward pass and its weight gradient are one
    matrix product each for all models, where most of the time goes. Later layers are batched,
    (A, fan_in, fan_out) with biases (A, 1, fan_out)."""

    def __init__(
        self,
        p: TorchMLPClassifier,
        sizes: list[int],
        alphas: list[float],
        device: torch.device,
        seed: int | None = None,
    ):
        self.p, self.device = p, device
        self.low = matmul_dtype(p.precision, device)  # of the first layer's products
        seed = _seed(p.random_state) if seed is None else seed
        self.gen = torch.Generator().manual_seed(seed)  # CPU: same on any device
        self.alphas = torch.tensor(alphas, device=device)  # of the active models
        a = len(alphas)
        self.params: list[torch.Tensor] = []
        for layer, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
            bound = np.sqrt(6.0 / (fan_in + fan_out))  # Glorot uniform, as scikit-learn (ReLU)
            w, b = (
                (torch.rand(s, generator=self.gen) * 2 - 1) * bound
                for s in [(fan_in, fan_out), (1, fan_out)]
            )
            if layer == 0:
                w, b = w.unsqueeze(1).expand(fan_in, a, fan_out), b.expand(a, fan_out)
            else:
                w, b = w.expand(a, fan_in, fan_out), b.expand(a, 1, fan_out)
            self.params += [w.to(device).contiguous(), b.to(device).contiguous()]
        self.active = list(range(a))  # models still training, by index into alphas
        self.rates = [1.0] * a  # of the active models, relative to learning_rate_init
        self.fits = [_Fit(*self._weights(i), 0, [], []) for i in range(a)]
        self.opt = self._adam()

    def _adam(self) -> torch.optim.Adam:
        # fused: one kernel per tensor for the whole update, on CPU and CUDA
        return torch.optim.Adam(self.params, lr=self.p.learning_rate_init, eps=1e-8, fused=True)

    def _slices(self, j: int) -> list[torch.Tensor]:
        """Views of model j's (position in the stack) tensors, in ``params`` order."""
        views = [self.params[0][:, j], self.params[1][j]]
        for w, b in zip(self.params[2::2], self.params[3::2], strict=True):
            views += [w[j], b[j, 0]]
        return views

    def _weights(self, j: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Copies of model j's weights and biases, scikit-learn's layout."""
        views = [v.clone() for v in self._slices(j)]
        return views[::2], views[1::2]

    def _slowed(self) -> list[int]:
        return [j for j, rate in enumerate(self.rates) if rate != 1.0]

    def _restore(self, j: int, fit: _Fit) -> None:
        """Put model j's kept weights back."""
        kept = [t for pair in zip(fit.weights, fit.biases, strict=True) for t in pair]
        for view, value in zip(self._slices(j), kept, strict=True):
            view.copy_(value)

    def forward(self, X: torch.Tensor) -> list[torch.Tensor]:
        """Every layer's output for rows X (n, D), each (A, n, fan_out): the hidden layers'
        after ReLU, then the logits. X is already in the first layer's dtype."""
        W, b = (w.to(X.dtype) for w in self.params[:2])
        h = torch.addmm(b.view(-1), X, W.view(len(W), -1)).float()
        h = h.view(len(X), *self.params[1].shape).transpose(0, 1)
        outs = [h]
        for i in range(2, len(self.params), 2):
            h = torch.baddbmm(self.params[i + 1], h.relu_(), self.params[i])
            outs.append(h)
        return outs

    def run(self, X_tr, y_tr, X_va, y_va) -> list[_Fit]:
        p, dev = self.p, self.device
        X = torch.as_tensor(np.ascontiguousarray(X_tr, np.float32), device=dev).to(self.low)
        y = torch.as_tensor(y_tr, dtype=torch.long, device=dev)
        val = None
        if X_va is not None:
            val = (
                torch.as_tensor(np.ascontiguousarray(X_va, np.float32), device=dev).to(self.low),
                torch.as_tensor(y_va, dtype=torch.long, device=dev),
            )
        n = len(y)
        batch = _batch_rows(p, n)
        self.patience = patience_epochs(p.n_iter_no_change, -(-n // batch))
        auto = p.n_iter_no_change == "auto"
        later = decayed_patience(self.patience) if auto else self.patience
        best = [np.inf if val is None else -np.inf] * len(self.fits)
        stall = [0] * len(self.fits)
        for epoch in range(1, int(p.max_iter) + 1):
            order = torch.randperm(n, generator=self.gen).to(dev)
            total = torch.zeros(len(self.active), device=dev, dtype=torch.float64)
            for start in range(0, n, batch):
                rows = order[start : start + batch]
                total += self._step(X[rows], y[rows]) * len(rows)
            losses = (total / n).tolist()  # one host sync per epoch
            scores = self._accuracy(*val).tolist() if val is not None else None
            finished = []
            for j, i in enumerate(self.active):
                fit = self.fits[i]
                fit.n_iter = epoch
                fit.losses.append(losses[j])
                if val is None:  # scikit-learn's rule on the training loss
                    stall[i] = stall[i] + 1 if losses[j] > best[i] - p.tol else 0
                    best[i] = min(best[i], losses[j])
                    improved = True  # without early stopping the last weights are kept
                else:
                    fit.scores.append(scores[j])
                    stall[i] = stall[i] + 1 if scores[j] < best[i] + p.tol else 0
                    improved = scores[j] > best[i]
                    best[i] = max(best[i], scores[j])
                if improved:
                    fit.weights, fit.biases = self._weights(j)
                if stall[i] > (self.patience if fit.decays == 0 else later):
                    if p.lr_schedule == "plateau" and fit.decays < PLATEAU_DECAYS:
                        fit.decays += 1
                        stall[i] = 0
                        self.rates[j] /= PLATEAU_FACTOR
                        self._restore(j, fit)  # go on from the best weights, more slowly
                    else:
                        fit.stopped = True
                        finished.append(j)
            if finished:
                self._drop(finished)
            if not self.active:
                break
        return self.fits

    def _step(self, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One Adam step of every active model on a batch; their losses (A,), float64."""
        losses, grads = self._gradients(X, y)
        for w, grad in zip(self.params, grads, strict=True):
            w.grad = grad
        # Models share Adam's learning rate; one whose rate was lowered takes that fraction of
        # its step (Adam's step is proportional to the rate).
        slower = {j: [v.clone() for v in self._slices(j)] for j in self._slowed()}
        self.opt.step()
        for j, before in slower.items():
            for view, old in zip(self._slices(j), before, strict=True):
                view.lerp_(old, 1.0 - self.rates[j])
        return losses.double()

    def _gradients(self, X: torch.Tensor, y: torch.Tensor):
        """Each active model's loss on a batch, mean cross-entropy + 0.5 * alpha * ||W||^2 / n
        (weights, not biases), and the gradients of their sum, one per tensor of ``params``."""
        outs = self.forward(X)
        n, Ws = len(y), self.params[::2]
        decay = self.alphas / n
        l2 = Ws[0].square().sum((0, 2)) + sum(W.square().sum((1, 2)) for W in Ws[1:])
        logp = outs[-1].log_softmax(2)  # (A, n, K)
        ce = -logp.gather(2, y.view(1, n, 1).expand(len(logp), n, 1)).mean((1, 2))
        # d(mean CE)/d(logits) = (softmax - one_hot) / n, then back layer by layer
        g = logp.exp_().sub_(F.one_hot(y, logp.shape[2]).to(logp.dtype)).div_(n)
        grads = [torch.empty(0)] * len(self.params)
        for i in range(len(self.params) - 2, 0, -2):  # later layers: weights i, biases i + 1
            h, W = outs[i // 2 - 1], self.params[i]  # h: this layer's input, after ReLU
            grads[i] = torch.bmm(h.transpose(1, 2), g).addcmul_(W, decay.view(-1, 1, 1))
            grads[i + 1] = g.sum(1, keepdim=True)
            g = torch.bmm(g, W.transpose(1, 2)).mul_(h > 0)
        g = g.transpose(0, 1).reshape(n, -1)  # (n, A * fan_out), as the first layer's output
        W = self.params[0]
        grads[0] = torch.mm(X.T, g.to(X.dtype)).float().view_as(W).addcmul_(W, decay.view(1, -1, 1))
        grads[1] = g.sum(0).view_as(self.params[1])
        return ce + 0.5 * decay * l2, grads

    def _accuracy(self, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (self.forward(X)[-1].argmax(2) == y).float().mean(1)

    def _drop(self, finished: list[int]) -> None:
        """Take finished models (positions in the stack) out of the weights and Adam's state."""
        keep = [j for j in range(len(self.active)) if j not in finished]
        self.active = [self.active[j] for j in keep]
        self.rates = [self.rates[j] for j in keep]
        if not keep:
            return
        index = torch.tensor(keep, device=self.device)
        self.alphas = self.alphas[index]
        old = [self.opt.state[w] for w in self.params]
        dims = [1] + [0] * (len(self.params) - 1)  # where each tensor holds the models
        self.params = [w.index_select(d, index) for w, d in zip(self.params, dims, strict=True)]
        self.opt = torch.optim.Adam(self.params, lr=self.p.learning_rate_init, eps=1e-8, fused=True)
        for w, d, state in zip(self.params, dims, old, strict=True):
            self.opt.state[w] = {
                k: (v if k == "step" else v.index_select(d, index)) for k, v in state.items()
            }
