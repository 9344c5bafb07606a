"""The probe heads: a preprocessing step (standardise / L2 / none, optional PCA), then a classifier.

Each head is a scikit-learn classifier whose parameters are the preprocessing choice plus the
classifier's own hyper-parameters, so ``GridSearchCV``, ``clone`` and ``select_and_fit`` see one
flat parameter set.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.svm import SVC, LinearSVC
from sklearn.utils import resample
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from featpipe.errors import ConfigError, HeadMismatchError
from featpipe.heads.preprocess import check_pca, make_preprocessor
from featpipe.heads.torch_logreg import (
    LinearPath,
    TorchLinearClassifier,
    TorchLogisticRegression,
    check_C,
    linear_path,
)
from featpipe.heads.torch_mlp import MLPPath, TorchMLPClassifier, mlp_path
from featpipe.heads.torch_svm import TorchLinearSVC
from featpipe.validation import is_count


def _classifier_has(method: str):
    """available_if check: the wrapped classifier (fitted, or as configured) offers ``method``."""

    def check(head: ProbeHead) -> bool:
        clf = getattr(head, "classifier_", None) or head._make_classifier(n_samples=None)
        return hasattr(clf, method)

    return check


class ProbeHead(ClassifierMixin, BaseEstimator):
    """Base class: ``preprocess`` (standardize | l2 | none) and ``pca`` (components or None) in
    front of the classifier built by :meth:`_make_classifier`. Fitted state: ``preprocessor_``,
    ``classifier_``, ``classes_``, ``n_features_in_``."""

    # Heads whose fit cost grows faster than linearly expose this as a parameter.
    max_train_samples: int | None = None
    # Heads that fit a whole grid over this one parameter faster than candidate by candidate
    # set it and implement ``path_accuracy`` (selection then calls it and reads the path's
    # ``val_accuracy`` and ``val_log_loss``).
    path_param: str | None = None

    def __init__(self, preprocess: str = "standardize", pca: int | None = None):
        self.preprocess = preprocess
        self.pca = pca

    def _make_classifier(self, n_samples: int | None) -> BaseEstimator:
        raise NotImplementedError

    def fit(self, X, y) -> ProbeHead:
        self.__dict__.pop("fitted_on_", None)  # a loaded head fitted again: other features
        X, y = validate_data(self, X, y)
        check_classification_targets(y)
        limit = self.max_train_samples
        if limit is not None and X.shape[0] > limit:
            X, y = _subsample(X, y, limit, getattr(self, "random_state", 0))
        self.preprocessor_ = self.preprocessor_for(X)
        Z = self.preprocessor_.fit_transform(X)
        self.classifier_ = self._make_classifier(n_samples=X.shape[0]).fit(Z, y)
        self.classes_ = self.classifier_.classes_
        if hasattr(self.classifier_, "n_iter_"):  # iterative solvers report their iterations
            self.n_iter_ = self.classifier_.n_iter_
        return self

    def path_accuracy(
        self, Z_tr, y_tr, values: list, Z_va, y_va, progress: bool = False
    ) -> LinearPath | MLPPath | None:
        """The path over ``path_param``'s ``values`` (increasing) fitted on (Z_tr, y_tr), with
        its validation accuracy on (Z_va, y_va) at each value and the log loss of the values
        tied at the best (both already preprocessed); None: no fast path (the default)."""
        return None

    def preprocessor_for(self, X: np.ndarray) -> BaseEstimator:
        """The unfitted preprocessing step for training rows ``X``: PCA cannot keep more
        components than samples or features (few-shot draws are tiny)."""
        pca = check_pca(self.pca)
        return make_preprocessor(self.preprocess, None if pca is None else min(pca, *X.shape))

    def transform_features(self, X) -> np.ndarray:
        """The preprocessed features the classifier sees."""
        check_is_fitted(self)
        check_width(self, X)
        X = validate_data(self, X, reset=False)
        return self.preprocessor_.transform(X)

    def predict(self, X) -> np.ndarray:
        Z = self.transform_features(X)  # checks fitted first
        return self.classifier_.predict(Z)

    @available_if(_classifier_has("predict_proba"))
    def predict_proba(self, X) -> np.ndarray:
        Z = self.transform_features(X)  # checks fitted first
        return self.classifier_.predict_proba(Z)

    @available_if(_classifier_has("decision_function"))
    def decision_function(self, X) -> np.ndarray:
        Z = self.transform_features(X)  # checks fitted first
        return self.classifier_.decision_function(Z)


def check_width(head: BaseEstimator, X) -> None:
    """Raise HeadMismatchError for features of another width than ``head`` was fitted on,
    naming what it was fitted on where known (``fitted_on_``, (width, words), which
    load_head sets from the sidecar). The message keeps scikit-learn's own words ("X has N
    features, but ... is expecting M features"), which its estimator checks look for."""
    expected = getattr(head, "n_features_in_", None)
    try:
        shape = np.shape(X)
    except (ValueError, TypeError):  # ragged rows: validate_data says what is wrong
        return
    if expected is None or len(shape) != 2 or shape[1] == expected:
        return
    width, fitted_on = getattr(head, "fitted_on_", None) or (None, None)
    if width != expected:  # fitted again since load_head set it, on other features
        fitted_on = None
    wanted = f"features of {fitted_on}" if fitted_on else "the features it was fitted on"
    raise HeadMismatchError(
        f"X has {shape[1]} features, but {type(head).__name__} is expecting {expected} "
        f"features as input: give it {wanted}, or fit a new head on these."
    )


def _subsample(
    X: np.ndarray, y: np.ndarray, limit: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """A seeded, stratified subsample of ``limit`` rows that keeps every class: a class too
    rare for its share to round to a row gets one row in place of a row of the class with the
    most rows in the draw (more than ``limit`` rows only when there are more classes)."""
    rows = resample(
        np.arange(len(y)), replace=False, n_samples=limit, stratify=y, random_state=seed
    )
    missing = np.setdiff1d(np.unique(y), y[rows])
    if len(missing):  # only draws that dropped a class change
        rng = np.random.default_rng(seed)
        for cls in missing:
            kept, counts = np.unique(y[rows], return_counts=True)
            add = rng.choice(np.flatnonzero(y == cls))
            if len(rows) >= limit and counts.max() > 1:  # give up a row of the largest class
                rows = np.delete(rows, np.flatnonzero(y[rows] == kept[counts.argmax()])[-1])
            rows = np.append(rows, add)
    return X[rows], y[rows]


def _torch_linear(head: ProbeHead, cls: type[TorchLinearClassifier]) -> TorchLinearClassifier:
    """The torch L-BFGS classifier ``cls`` with the head's C, tol, max_iter, device, threads."""
    names = ("C", "tol", "max_iter", "device", "n_threads")
    return cls(**{name: getattr(head, name) for name in names})


def _c_path_accuracy(
    head: ProbeHead, cls: type[TorchLinearClassifier], Z_tr, y_tr, Cs, Z_va, y_va, progress
) -> LinearPath:
    """``cls``'s warm-started C path with the head's settings, with its validation accuracy
    and the tied Cs' log loss, read from the path's own solutions: selection refits none."""
    est = _torch_linear(head, cls)
    return linear_path(
        cls,
        Z_tr,
        y_tr,
        Cs,
        X_val=Z_va,
        y_val=y_va,
        tol=est.tol,
        max_iter=est.max_iter,
        device=est.device,
        n_threads=est.n_threads,
        progress=progress,
    )


class LogisticProbe(ProbeHead):
    """Multinomial L2 logistic regression (scikit-learn's objective, fitted in torch)."""

    path_param = "C"

    def __init__(
        self,
        C: float = 1.0,
        *,
        preprocess: str = "standardize",
        pca: int | None = None,
        tol: float = 1e-4,
        max_iter: int = 1000,
        device: str = "auto",
        n_threads: int | None = None,
    ):
        super().__init__(preprocess=preprocess, pca=pca)
        self.C = C
        self.tol = tol
        self.max_iter = max_iter
        self.device = device
        self.n_threads = n_threads

    def _make_classifier(self, n_samples: int | None) -> BaseEstimator:
        return _torch_linear(self, TorchLogisticRegression)

    def path_accuracy(self, Z_tr, y_tr, Cs: list, Z_va, y_va, progress: bool = False) -> LinearPath:
        """One warm-started L-BFGS path over the Cs (increasing) on preprocessed features."""
        return _c_path_accuracy(self, TorchLogisticRegression, Z_tr, y_tr, Cs, Z_va, y_va, progress)


LINEAR_SVM_SOLVERS = ("lbfgs", "liblinear")


class LinearSVMProbe(ProbeHead):
    """Linear SVM: liblinear's default objective (squared hinge, one-vs-rest, penalised
    intercept), fitted by torch L-BFGS (``solver="lbfgs"``, CPU or CUDA, a warm-started C path
    in selection) or by liblinear itself (``solver="liblinear"``, scikit-learn's ``LinearSVC``).
    ``max_iter`` is L-BFGS iterations or liblinear's; ``random_state`` only seeds liblinear;
    ``device`` and ``n_threads`` only apply to L-BFGS."""

    path_param = "C"

    def __init__(
        self,
        C: float = 1.0,
        *,
        solver: str = "lbfgs",
        preprocess: str = "standardize",
        pca: int | None = None,
        tol: float = 1e-4,
        max_iter: int = 5000,
        random_state: int = 0,
        device: str = "auto",
        n_threads: int | None = None,
    ):
        super().__init__(preprocess=preprocess, pca=pca)
        self.C = C
        self.solver = solver
        self.tol = tol
        self.max_iter = max_iter
        self.random_state = random_state
        self.device = device
        self.n_threads = n_threads

    def _make_classifier(self, n_samples: int | None) -> BaseEstimator:
        if self.solver == "liblinear":
            return LinearSVC(
                C=self.C, tol=self.tol, max_iter=self.max_iter, random_state=self.random_state
            )
        if self.solver != "lbfgs":
            raise ConfigError(
                f"Unknown linear SVM solver {self.solver!r}; "
                f"valid: {', '.join(LINEAR_SVM_SOLVERS)}."
            )
        return _torch_linear(self, TorchLinearSVC)

    def path_accuracy(
        self, Z_tr, y_tr, Cs: list, Z_va, y_va, progress: bool = False
    ) -> LinearPath | None:
        """One warm-started L-BFGS path over the Cs (increasing) on preprocessed features;
        None for liblinear."""
        if self.solver != "lbfgs":
            return None
        return _c_path_accuracy(self, TorchLinearSVC, Z_tr, y_tr, Cs, Z_va, y_va, progress)


def check_gamma(gamma: object, names: tuple[str, ...] = ("scale",)) -> None:
    """Refuse a gamma that is not one of ``names`` nor a positive finite number: 0 made every
    kernel value 1 (one prediction for every image), inf every value but a row's own 0."""
    if isinstance(gamma, str) and gamma in names:
        return
    if isinstance(gamma, bool | str) or not (
        isinstance(gamma, numbers.Real) and math.isfinite(gamma) and gamma > 0
    ):
        allowed = " or ".join(repr(name) for name in names)
        raise ConfigError(
            f"gamma must be {allowed} or a positive finite number; got {gamma!r}. gamma is the "
            "RBF kernel's inverse width: 'scale' (1 / (features x their variance)) suits "
            "standardised features."
        )


class RBFSVMProbe(ProbeHead):
    """Kernel SVM with an RBF kernel (``gamma='scale'`` is 1 / (D * Var(X))).

    Kernel SVMs cost O(n²) memory and more in time, so by default the fit uses a stratified
    subsample of at most ``max_train_samples`` rows (None: every row), drawn with
    ``random_state``.
    """

    def __init__(
        self,
        C: float = 1.0,
        *,
        gamma: float | str = "scale",
        preprocess: str = "standardize",
        pca: int | None = None,
        max_train_samples: int | None = 10_000,
        random_state: int = 0,
    ):
        super().__init__(preprocess=preprocess, pca=pca)
        self.C = C
        self.gamma = gamma
        self.max_train_samples = max_train_samples
        self.random_state = random_state

    def _make_classifier(self, n_samples: int | None) -> BaseEstimator:
        # SVC took C = inf (a hard margin) and gamma = 0 (one prediction for every image)
        check_C(self.C)
        check_gamma(self.gamma, ("scale", "auto"))
        return SVC(C=self.C, kernel="rbf", gamma=self.gamma)


MLP_SOLVERS = ("torch", "sklearn")
_MLP_SHARED = (  # the MLPProbe parameters both solvers take
    "hidden_layer_sizes",
    "alpha",
    "learning_rate_init",
    "batch_size",
    "max_iter",
    "tol",
    "n_iter_no_change",
    "early_stopping",
    "validation_fraction",
    "random_state",
)


class MLPProbe(ProbeHead):
    """A small multilayer perceptron (ReLU, Adam) on the features, early stopping on a held-out
    ``validation_fraction`` of the training rows: trained in torch (``solver="torch"``, CPU or
    CUDA; every alpha of a selection grid side by side) or by scikit-learn's ``MLPClassifier``
    (``solver="sklearn"``) with the same settings. ``device``, ``n_threads``, ``precision``
    (bfloat16 first-layer products where the hardware has them) and ``lr_schedule`` (a lower
    learning rate at each plateau) only apply to torch: see :mod:`featpipe.heads.torch_mlp`.
    ``n_iter_no_change="auto"`` is the torch head's patience counted in Adam steps and
    scikit-learn's own 10 epochs for ``MLPClassifier``."""

    path_param = "alpha"

    def __init__(
        self,
        hidden_layer_sizes: tuple[int, ...] = (512,),
        *,
        alpha: float = 1e-4,
        solver: str = "torch",
        learning_rate_init: float = 1e-3,
        batch_size: int | str = "auto",
        max_iter: int = 200,
        tol: float = 1e-4,
        n_iter_no_change: int | str = "auto",
        early_stopping: bool = True,
        validation_fraction: float = 0.1,
        preprocess: str = "standardize",
        pca: int | None = None,
        random_state: int = 0,
        device: str = "auto",
        n_threads: int | None = None,
        precision: str = "auto",
        lr_schedule: str = "plateau",
    ):
        super().__init__(preprocess=preprocess, pca=pca)
        self.hidden_layer_sizes = hidden_layer_sizes
        self.alpha = alpha
        self.solver = solver
        self.learning_rate_init = learning_rate_init
        self.batch_size = batch_size
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

    def _mlp_params(self) -> dict:
        return {name: getattr(self, name) for name in _MLP_SHARED}

    def _torch_options(self) -> dict:
        names = ("device", "n_threads", "precision", "lr_schedule")
        return {name: getattr(self, name) for name in names}

    def _make_classifier(self, n_samples: int | None) -> BaseEstimator:
        if self.solver == "sklearn":
            params = self._mlp_params()
            if params["n_iter_no_change"] == "auto":
                params["n_iter_no_change"] = 10  # MLPClassifier's default
            return MLPClassifier(**params)
        if self.solver != "torch":
            raise ConfigError(
                f"Unknown MLP solver {self.solver!r}; valid: {', '.join(MLP_SOLVERS)}."
            )
        return TorchMLPClassifier(**self._mlp_params(), **self._torch_options())

    def path_accuracy(
        self, Z_tr, y_tr, alphas: list, Z_va, y_va, progress: bool = False
    ) -> MLPPath | None:
        """One model per alpha, all trained side by side on preprocessed features; None for
        scikit-learn."""
        if self.solver != "torch":
            return None
        params = {k: v for k, v in self._mlp_params().items() if k != "alpha"}
        return mlp_path(
            Z_tr,
            y_tr,
            alphas,
            X_val=Z_va,
            y_val=y_va,
            **self._torch_options(),
            **params,
        )


KNN_METRICS = ("cosine", "euclidean")


class KNNProbe(ProbeHead):
    """k nearest neighbours under cosine or Euclidean distance (``n_neighbors`` is capped at
    the number of training samples, so tiny few-shot sets still fit)."""

    def __init__(
        self,
        n_neighbors: int = 5,
        *,
        metric: str = "cosine",
        weights: str = "uniform",
        preprocess: str = "standardize",
        pca: int | None = None,
    ):
        super().__init__(preprocess=preprocess, pca=pca)
        self.n_neighbors = n_neighbors
        self.metric = metric
        self.weights = weights

    def params_fitted_on(self, params: dict, n_samples: int) -> dict:
        """``params`` as a fit on ``n_samples`` rows uses them (``n_neighbors`` capped), so
        that selection validates, and refits with, the k that really ran."""
        k = params.get("n_neighbors", self.n_neighbors)
        return {**params, "n_neighbors": n_samples} if k > n_samples else params

    def _make_classifier(self, n_samples: int | None) -> BaseEstimator:
        if self.metric not in KNN_METRICS:
            raise ConfigError(
                f"Unknown kNN metric {self.metric!r}; valid: {', '.join(KNN_METRICS)}."
            )
        return KNeighborsClassifier(
            n_neighbors=self._k(n_samples), metric=self.metric, weights=self.weights,
            algorithm="brute",
        )  # fmt: skip

    def _k(self, n_samples: int | None) -> int:
        """``n_neighbors`` capped at ``n_samples`` (when given), checked first: an infinite
        one was capped to every training row, a vote of the whole train split."""
        if not is_count(self.n_neighbors):
            raise ConfigError(
                f"n_neighbors must be >= 1, a whole number; got {self.n_neighbors!r}."
            )
        return int(self.n_neighbors if n_samples is None else min(self.n_neighbors, n_samples))
