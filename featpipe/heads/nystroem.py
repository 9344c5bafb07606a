"""An RBF SVM for many rows: Nystroem features (scikit-learn's ``Nystroem``) and a linear SVM.

The exact kernel SVM (``rbf_svm``) costs O(n²) memory and more in time, so it trains on a
subsample of 10,000 rows by default. The Nystroem map approximates the RBF kernel with
``n_components`` landmark rows: features of width ``n_components``, on which the linear SVM
(liblinear's objective, torch L-BFGS) trains on every row in O(n · n_components) time and memory,
with the warm-started C path in selection.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.kernel_approximation import Nystroem
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from featpipe.errors import ConfigError
from featpipe.heads.estimators import ProbeHead, _c_path_accuracy, check_gamma
from featpipe.heads.torch_logreg import LinearPath
from featpipe.heads.torch_svm import TorchLinearSVC
from featpipe.validation import is_count

_LINEAR = ("C", "tol", "max_iter", "device", "n_threads")  # what the linear SVM takes


def rbf_gamma(gamma: float | str, X: np.ndarray) -> float:
    """``gamma`` as a number: ``"scale"`` is SVC's 1 / (D * Var(X)) (1 for constant X)."""
    if gamma == "scale":
        var = float(np.var(X))
        return 1.0 / (X.shape[1] * var) if var > 0 else 1.0
    check_gamma(gamma)
    return float(gamma)


class NystroemClassifier(ClassifierMixin, BaseEstimator):
    """Nystroem features approximating the RBF kernel ``exp(-gamma ||x - x'||²)`` with
    ``n_components`` landmarks drawn with ``random_state`` (at most one per training row), then
    :class:`TorchLinearSVC` with ``C``, ``tol``, ``max_iter``, ``device``, ``n_threads``."""

    def __init__(
        self,
        C: float = 1.0,
        *,
        gamma: float | str = "scale",
        n_components: int = 1000,
        random_state: int = 0,
        tol: float = 1e-4,
        max_iter: int = 1000,
        device: str = "auto",
        n_threads: int | None = None,
    ):
        self.C = C
        self.gamma = gamma
        self.n_components = n_components
        self.random_state = random_state
        self.tol = tol
        self.max_iter = max_iter
        self.device = device
        self.n_threads = n_threads

    def feature_map(self, X: np.ndarray) -> Nystroem:
        """The Nystroem map fitted on training rows ``X``."""
        n_components = self.n_components
        if not is_count(n_components):
            raise ConfigError(
                f"NystroemClassifier: n_components must be a whole number >= 1 (the number of "
                f"landmark rows, e.g. 1000); got {n_components!r}."
            )
        return Nystroem(
            kernel="rbf",
            gamma=rbf_gamma(self.gamma, X),
            n_components=min(int(n_components), len(X)),
            random_state=self.random_state,
        ).fit(X)

    def fit(self, X, y) -> NystroemClassifier:
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        self.features_ = self.feature_map(X)
        svm = TorchLinearSVC(**{name: getattr(self, name) for name in _LINEAR})
        self.linear_ = svm.fit(_transform(self.features_, X), y)
        self.classes_ = self.linear_.classes_
        self.n_iter_ = self.linear_.n_iter_
        return self

    def decision_function(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return self.linear_.decision_function(_transform(self.features_, X))

    def predict(self, X) -> np.ndarray:
        scores = self.decision_function(X)
        index = (scores > 0).astype(int) if scores.ndim == 1 else scores.argmax(axis=1)
        return self.classes_[index]


def _transform(features: Nystroem, X: np.ndarray) -> np.ndarray:
    return features.transform(X).astype(np.float32, copy=False)  # the SVM trains in float32


class NystroemSVMProbe(ProbeHead):
    """RBF SVM at scale: the preprocessing step, then :class:`NystroemClassifier` (Nystroem
    features and a linear SVM) trained on every row. Prefer it to ``RBFSVMProbe`` when the
    train split is beyond the exact SVM's subsample (``max_train_samples``, 10,000)."""

    path_param = "C"

    def __init__(
        self,
        C: float = 1.0,
        *,
        gamma: float | str = "scale",
        n_components: int = 1000,
        preprocess: str = "standardize",
        pca: int | None = None,
        random_state: int = 0,
        tol: float = 1e-4,
        max_iter: int = 1000,
        device: str = "auto",
        n_threads: int | None = None,
    ):
        super().__init__(preprocess=preprocess, pca=pca)
        self.C = C
        self.gamma = gamma
        self.n_components = n_components
        self.random_state = random_state
        self.tol = tol
        self.max_iter = max_iter
        self.device = device
        self.n_threads = n_threads

    def _make_classifier(self, n_samples: int | None) -> NystroemClassifier:
        names = ("gamma", "n_components", "random_state", *_LINEAR)
        return NystroemClassifier(**{name: getattr(self, name) for name in names})

    def path_accuracy(self, Z_tr, y_tr, Cs: list, Z_va, y_va, progress: bool = False) -> LinearPath:
        """The linear SVM's warm-started C path (increasing C, with its validation accuracy)
        on one Nystroem map's features."""
        features = self._make_classifier(None).feature_map(Z_tr)
        F_tr, F_va = _transform(features, Z_tr), _transform(features, Z_va)
        return _c_path_accuracy(self, TorchLinearSVC, F_tr, y_tr, Cs, F_va, y_va, progress)
