"""A linear head trained chunk by chunk, for features that do not fit in memory.

Two kinds of pass over the chunks: one to accumulate standardisation statistics, then
``epochs`` passes of ``SGDClassifier.partial_fit``. Only one chunk is held at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import SGDClassifier
from sklearn.preprocessing import StandardScaler
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from tqdm.auto import tqdm

from featpipe.errors import ConfigError

Chunks = Iterable[tuple[np.ndarray, np.ndarray]]


def _array_chunks(X: np.ndarray, y: np.ndarray, rows: int) -> Iterator[tuple[np.ndarray, ...]]:
    for start in range(0, len(X), rows):
        yield X[start : start + rows], y[start : start + rows]


def _log_loss(head: StreamingLinearHead) -> bool:
    return head.loss in ("log_loss", "modified_huber")


class StreamingLinearHead(ClassifierMixin, BaseEstimator):
    """Standardise, then a linear classifier by SGD over chunks (``loss`` as in SGDClassifier).

    Use :meth:`fit_store` for a FeatureStore (reads ``store.iter_chunks``), :meth:`fit_chunks`
    for any re-iterable source of (X, y) chunks, or ``fit`` for arrays (chunked the same way).
    """

    def __init__(
        self,
        loss: str = "log_loss",
        *,
        alpha: float = 1e-4,
        epochs: int = 10,
        chunk_rows: int = 4096,
        random_state: int = 0,
        progress: bool = False,
    ):
        self.loss = loss
        self.alpha = alpha
        self.epochs = epochs
        self.chunk_rows = chunk_rows
        self.random_state = random_state
        self.progress = progress

    def fit(self, X, y) -> StreamingLinearHead:
        X, y = validate_data(self, X, y)
        check_classification_targets(y)
        rows = int(self.chunk_rows)
        return self.fit_chunks(lambda: _array_chunks(X, y, rows), classes=np.unique(y))

    def fit_store(self, store, layer: str, split: str = "train") -> StreamingLinearHead:
        """Train on one split of a FeatureStore without loading it whole."""
        return self.fit_chunks(
            lambda: store.iter_chunks(layer, split, rows=int(self.chunk_rows)),
            classes=np.arange(len(store.classes)),
        )

    def fit_chunks(
        self, chunks: Callable[[], Chunks], classes: np.ndarray | None = None
    ) -> StreamingLinearHead:
        """``chunks()`` must return a fresh iterator of (X, y) each time it is called."""
        if int(self.epochs) < 1:
            raise ConfigError(f"epochs must be >= 1; got {self.epochs}.")
        scaler, seen, n_features = StandardScaler(), [], None
        for X, y in chunks():  # pass 1: mean and variance, and the label set
            scaler.partial_fit(X)
            seen.append(np.unique(y))
            n_features = X.shape[1]
        if n_features is None:
            raise ConfigError("The training chunks are empty; nothing to fit.")
        classes = np.unique(np.concatenate(seen)) if classes is None else np.asarray(classes)
        if len(classes) < 2:
            raise ConfigError(f"A classifier needs at least 2 classes; got 1 class {classes}.")
        sgd = SGDClassifier(loss=self.loss, alpha=self.alpha, random_state=self.random_state)
        for _ in tqdm(range(int(self.epochs)), desc="SGD epochs", disable=not self.progress):
            for X, y in chunks():
                sgd.partial_fit(scaler.transform(X), y, classes=classes)
        self.scaler_, self.classifier_ = scaler, sgd
        self.classes_ = sgd.classes_
        self.n_features_in_ = n_features
        return self

    def _transform(self, X) -> np.ndarray:
        check_is_fitted(self)
        return self.scaler_.transform(validate_data(self, X, reset=False))

    def predict(self, X) -> np.ndarray:
        Z = self._transform(X)  # checks fitted first
        return self.classifier_.predict(Z)

    def decision_function(self, X) -> np.ndarray:
        Z = self._transform(X)  # checks fitted first
        return self.classifier_.decision_function(Z)

    @available_if(_log_loss)
    def predict_proba(self, X) -> np.ndarray:
        Z = self._transform(X)  # checks fitted first
        return self.classifier_.predict_proba(Z)
