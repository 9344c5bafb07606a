"""The probe heads: a preprocessing step (standardise / L2 / none, optional PCA), then a classifier.

Each head is a scikit-learn classifier whose parameters are the preprocessing choice plus the
classifier's own hyper-parameters, so ``GridSearchCV``, ``clone`` and ``select_and_fit`` see one
flat parameter set.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.svm import SVC, LinearSVC
from sklearn.utils import resample
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from featpipe.errors import ConfigError
from featpipe.heads.preprocess import make_preprocessor
from featpipe.heads.torch_logreg import TorchLogisticRegression


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

    def __init__(self, preprocess: str = "standardize", pca: int | None = None):
        self.preprocess = preprocess
        self.pca = pca

    def _make_classifier(self, n_samples: int | None) -> BaseEstimator:
        raise NotImplementedError

    def fit(self, X, y) -> ProbeHead:
        X, y = validate_data(self, X, y)
        check_classification_targets(y)
        limit = self.max_train_samples
        if limit is not None and X.shape[0] > limit:  # a seeded, stratified subsample
            seed = getattr(self, "random_state", 0)
            X, y = resample(X, y, replace=False, n_samples=limit, stratify=y, random_state=seed)
        self.preprocessor_ = self.preprocessor_for(X)
        Z = self.preprocessor_.fit_transform(X)
        self.classifier_ = self._make_classifier(n_samples=X.shape[0]).fit(Z, y)
        self.classes_ = self.classifier_.classes_
        if hasattr(self.classifier_, "n_iter_"):  # iterative solvers report their iterations
            self.n_iter_ = self.classifier_.n_iter_
        return self

    def preprocessor_for(self, X: np.ndarray) -> BaseEstimator:
        """The unfitted preprocessing step for training rows ``X``: PCA cannot keep more
        components than samples or features (few-shot draws are tiny)."""
        pca = None if self.pca is None else min(int(self.pca), *X.shape)
        return make_preprocessor(self.preprocess, pca)

    def transform_features(self, X) -> np.ndarray:
        """The preprocessed features the classifier sees."""
        check_is_fitted(self)
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


class LogisticProbe(ProbeHead):
    """Multinomial L2 logistic regression (scikit-learn's objective, fitted in torch)."""

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
        return TorchLogisticRegression(
            C=self.C,
            tol=self.tol,
            max_iter=self.max_iter,
            device=self.device,
            n_threads=self.n_threads,
        )


class LinearSVMProbe(ProbeHead):
    """Linear SVM (squared hinge, one-vs-rest, liblinear)."""

    def __init__(
        self,
        C: float = 1.0,
        *,
        preprocess: str = "standardize",
        pca: int | None = None,
        max_iter: int = 5000,
        random_state: int = 0,
    ):
        super().__init__(preprocess=preprocess, pca=pca)
        self.C = C
        self.max_iter = max_iter
        self.random_state = random_state

    def _make_classifier(self, n_samples: int | None) -> BaseEstimator:
        return LinearSVC(C=self.C, max_iter=self.max_iter, random_state=self.random_state)


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
        return SVC(C=self.C, kernel="rbf", gamma=self.gamma)


class MLPProbe(ProbeHead):
    """A small multilayer perceptron (Adam, ReLU) on the features."""

    def __init__(
        self,
        hidden_layer_sizes: tuple[int, ...] = (512,),
        *,
        alpha: float = 1e-4,
        learning_rate_init: float = 1e-3,
        max_iter: int = 200,
        preprocess: str = "standardize",
        pca: int | None = None,
        random_state: int = 0,
    ):
        super().__init__(preprocess=preprocess, pca=pca)
        self.hidden_layer_sizes = hidden_layer_sizes
        self.alpha = alpha
        self.learning_rate_init = learning_rate_init
        self.max_iter = max_iter
        self.random_state = random_state

    def _make_classifier(self, n_samples: int | None) -> BaseEstimator:
        return MLPClassifier(
            hidden_layer_sizes=self.hidden_layer_sizes,
            alpha=self.alpha,
            learning_rate_init=self.learning_rate_init,
            max_iter=self.max_iter,
            random_state=self.random_state,
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

    def _make_classifier(self, n_samples: int | None) -> BaseEstimator:
        if self.metric not in KNN_METRICS:
            raise ConfigError(
                f"Unknown kNN metric {self.metric!r}; valid: {', '.join(KNN_METRICS)}."
            )
        k = self.n_neighbors if n_samples is None else min(self.n_neighbors, n_samples)
        return KNeighborsClassifier(
            n_neighbors=k, metric=self.metric, weights=self.weights, algorithm="brute"
        )
