"""k nearest neighbours through faiss (the ``faiss`` extra): exact search in a flat index, for
train splits too large for scikit-learn's kNN, or on request.

The distances and votes are scikit-learn's ``KNeighborsClassifier`` with ``algorithm="brute"``
(what :class:`KNNProbe` uses): cosine distance is 1 - the inner product of L2-normalised rows
(``IndexFlatIP``), Euclidean the square root of ``IndexFlatL2``'s squared distance,
``weights="distance"`` weighs by 1 / distance (exact matches alone when any), and a tied vote
goes to the first class, as there. Ties in distance are not matched: when several training rows
are equally far at the k-th place, faiss and scikit-learn may keep different ones (and so
predict differently). :meth:`FaissKNNProbe.fit_store` builds the index chunk by chunk from a
store, so the train split is held once, as float32, in the index (scikit-learn's kNN behind
``select_and_fit`` holds the split, its preprocessed copy and the fitted copy).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from featpipe.distributed import Ranks
from featpipe.errors import ConfigError
from featpipe.extras import import_extra
from featpipe.heads.chunks import Chunks, fitted_preprocessor, row_statistics
from featpipe.heads.estimators import KNN_METRICS, KNNProbe
from featpipe.heads.streaming import check_chunk_rows
from featpipe.validation import is_count

KNN_WEIGHTS = ("uniform", "distance")
SEARCH_ROWS = 4096  # queries searched at a time, so the (rows, k) results stay small


def _faiss():
    return import_extra("faiss", "faiss", "kNN through faiss (the knn_faiss head)")


def _class_index(classes: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The index of each label of ``y`` in ``classes`` (sorted, unique); a label not in ``classes``
    is refused (searchsorted alone would give it a neighbouring class's index)."""
    y = np.asarray(y)
    index = np.searchsorted(classes, y).clip(0, max(len(classes) - 1, 0))
    unknown = ~np.isin(y, classes)
    if unknown.any():
        raise ConfigError(
            f"Labels {np.unique(y[unknown]).tolist()} are not among the classes given to "
            f"fit_chunks; valid: {np.asarray(classes).tolist()}. Pass every label of the "
            "training rows in classes."
        )
    return index


class FaissKNeighborsClassifier(ClassifierMixin, BaseEstimator):
    """scikit-learn's brute-force ``KNeighborsClassifier`` (``metric`` cosine or euclidean,
    ``weights`` uniform or distance) on an exact faiss index (float32), which
    :meth:`fit_chunks` fills one chunk of rows at a time."""

    def __init__(self, n_neighbors: int = 5, *, metric: str = "cosine", weights: str = "uniform"):
        self.n_neighbors = n_neighbors
        self.metric = metric
        self.weights = weights

    def fit(self, X, y) -> FaissKNeighborsClassifier:
        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        return self.fit_chunks([(X, y)], X.shape[1], np.unique(y))

    def fit_chunks(
        self, chunks: Iterable[tuple[np.ndarray, np.ndarray]], dim: int, classes: np.ndarray
    ) -> FaissKNeighborsClassifier:
        """Index the rows of ``chunks`` of (X (m, dim), y), labelled with ``classes`` (every
        label the rows hold, in any order), one chunk at a time."""
        if self.metric not in KNN_METRICS or self.weights not in KNN_WEIGHTS:
            raise ConfigError(
                f"Unknown kNN metric {self.metric!r} or weights {self.weights!r}; valid metrics: "
                f"{', '.join(KNN_METRICS)}; weights: {', '.join(KNN_WEIGHTS)}."
            )
        if not is_count(self.n_neighbors):  # int() ran 2.5 as 2, where knn refuses it
            raise ConfigError(
                f"n_neighbors must be >= 1, a whole number; got {self.n_neighbors!r}."
            )
        faiss = _faiss()
        index = faiss.IndexFlatIP(dim) if self.metric == "cosine" else faiss.IndexFlatL2(dim)
        # Sorted and unique, as classes_ are in scikit-learn (partial_fit's classes too): the
        # labels are looked up by binary search, so an unsorted list gave rows other classes.
        classes, labels = np.unique(np.asarray(classes)), []
        for X, y in chunks:
            if np.ndim(X) != 2 or np.shape(X)[1] != dim:  # faiss's own check: a bare assert
                raise ConfigError(
                    f"fit_chunks was given dim={dim}, but a chunk of rows has shape "
                    f"{np.shape(X)}; every chunk must be (rows, {dim})."
                )
            labels.append(_class_index(classes, y))
            index.add(self._rows(X))
        self.index_, self.classes_, self.n_features_in_ = index, classes, dim
        self.y_index_ = np.concatenate(labels) if labels else np.empty(0, dtype=np.int64)
        return self

    def _rows(self, X: np.ndarray) -> np.ndarray:
        X = np.ascontiguousarray(X, dtype=np.float32)
        if self.metric == "cosine":  # cosine similarity is the inner product of unit rows
            norms = np.linalg.norm(X, axis=1, keepdims=True)
            X = X / np.where(norms > 0, norms, 1.0)
        return X

    def kneighbors(
        self, X, n_neighbors: int | None = None, return_distance: bool = True
    ) -> tuple[np.ndarray, np.ndarray] | np.ndarray:
        """As scikit-learn's: (distances, indices) of the nearest training rows, nearest first."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float32)
        k = int(self.n_neighbors if n_neighbors is None else n_neighbors)
        if k > self.index_.ntotal:
            raise ValueError(
                f"Expected n_neighbors <= n_samples_fit, but n_neighbors = {k}, "
                f"n_samples_fit = {self.index_.ntotal}, n_samples = {X.shape[0]}"
            )
        dists, index = [], []
        for start in range(0, len(X), SEARCH_ROWS):
            D, I = self.index_.search(self._rows(X[start : start + SEARCH_ROWS]), k)  # noqa: E741
            D = 1.0 - D if self.metric == "cosine" else np.sqrt(np.maximum(D, 0.0))
            dists.append(D.astype(np.float64))
            index.append(I)
        dist = np.concatenate(dists) if dists else np.empty((0, k))
        ind = np.concatenate(index) if index else np.empty((0, k), dtype=np.int64)
        return (dist, ind) if return_distance else ind

    def predict_proba(self, X) -> np.ndarray:
        dist, ind = self.kneighbors(X)
        if self.weights == "distance":  # scikit-learn's rule: exact matches alone, if any
            with np.errstate(divide="ignore"):
                weights = 1.0 / np.maximum(dist, 0.0)
            exact = np.isinf(weights)
            rows = exact.any(axis=1)
            weights[rows] = exact[rows]
        else:
            weights = np.ones_like(dist)
        proba = np.zeros((len(ind), len(self.classes_)))
        np.add.at(proba, (np.arange(len(ind))[:, None], self.y_index_[ind]), weights)
        total = proba.sum(axis=1, keepdims=True)
        return proba / np.where(total > 0, total, 1.0)

    def predict(self, X) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]  # a tie: the first class

    def __getstate__(self) -> dict:
        """Pickles hold the index as faiss's own bytes."""
        state = dict(self.__dict__)
        if "index_" in state:
            state["index_"] = _faiss().serialize_index(state["index_"])
        return state

    def __setstate__(self, state: dict) -> None:
        if "index_" in state:
            state["index_"] = _faiss().deserialize_index(state["index_"])
        self.__dict__.update(state)


class FaissKNNProbe(KNNProbe):
    """:class:`KNNProbe` (the same parameters, preprocessing, neighbours and predictions) on an
    exact faiss index. :meth:`fit_store` builds it from a store chunk by chunk (``chunk_rows``
    rows at a time, after a first pass for the standardisation statistics). Needs the
    ``faiss`` extra: ``pip install "featpipe[faiss]"``."""

    streams_store = True  # select_and_fit fits it with fit_store on a FeatureStore

    def __init__(
        self,
        n_neighbors: int = 5,
        *,
        metric: str = "cosine",
        weights: str = "uniform",
        preprocess: str = "standardize",
        pca: int | None = None,
        chunk_rows: int = 4096,
    ):
        super().__init__(
            n_neighbors, metric=metric, weights=weights, preprocess=preprocess, pca=pca
        )
        self.chunk_rows = chunk_rows

    def _make_classifier(self, n_samples: int | None) -> BaseEstimator:
        return FaissKNeighborsClassifier(
            self._k(n_samples), metric=self.metric, weights=self.weights
        )

    def fit_store(
        self, store, layer: str, splits: Sequence[str] = ("train",), progress: bool = False
    ) -> FaissKNNProbe:
        """Index the rows of ``splits`` of one layer of a FeatureStore, chunk by chunk."""
        chunks = Chunks.of_store(store, layer, splits, check_chunk_rows(self.chunk_rows))
        stats = row_statistics(chunks, Ranks(), moments=self.preprocess == "standardize")
        self.preprocessor_ = fitted_preprocessor(self.preprocess, self.pca, stats, chunks.dim)
        rows = (
            (self.preprocessor_.transform(X), y)
            for X, y in chunks.read(range(chunks.n_chunks))
            if len(y)
        )
        self.classifier_ = self._make_classifier(stats.n).fit_chunks(
            rows, chunks.dim, stats.classes
        )
        self.classes_ = self.classifier_.classes_
        self.n_features_in_ = chunks.dim
        return self
