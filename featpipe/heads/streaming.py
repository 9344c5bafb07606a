"""A linear head trained chunk by chunk, for features that do not fit in memory.

Two kinds of pass over the chunks: one to accumulate standardisation statistics, then
``epochs`` passes of ``SGDClassifier.partial_fit``. Stores built from class folders hold their
rows grouped by class, and SGD that sees them in that order favours the classes it saw last.
So every epoch visits the chunks in a new seeded order and shuffles the rows within a buffer of
``buffer_chunks`` chunks: at most that many chunks are held at a time.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import SGDClassifier
from sklearn.preprocessing import StandardScaler
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from featpipe.distributed import current_ranks
from featpipe.distributed.progress import track
from featpipe.errors import ConfigError
from featpipe.validation import is_count

Chunks = Iterable[tuple[np.ndarray, np.ndarray]]
# chunks(order): the (X, y) chunks with the indices in ``order``, in that order.
ChunkReader = Callable[[Sequence[int]], Chunks]


def _array_chunks(X: np.ndarray, y: np.ndarray, rows: int) -> ChunkReader:
    def read(order: Sequence[int]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for i in order:
            yield X[i * rows : (i + 1) * rows], y[i * rows : (i + 1) * rows]

    return read


def _shuffled(
    chunks: Chunks, buffer_chunks: int, rng: np.random.Generator
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The rows of ``chunks``, shuffled within consecutive groups of ``buffer_chunks`` chunks."""
    buffer: list[tuple[np.ndarray, np.ndarray]] = []
    for chunk in chunks:
        buffer.append(chunk)
        if len(buffer) == buffer_chunks:
            yield _mix(buffer, rng)
            buffer = []
    if buffer:
        yield _mix(buffer, rng)


def _mix(
    buffer: list[tuple[np.ndarray, np.ndarray]], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    rows = rng.permutation(sum(len(y) for _, y in buffer))
    return np.concatenate([X for X, _ in buffer])[rows], np.concatenate([y for _, y in buffer])[
        rows
    ]


# Reading by id costing this many times a pass in stored order is worth a warning.
_FAR_FROM_ID_ORDER = 4
_CHECKED: set[tuple] = set()  # (store file, rows, split) whose cost was estimated
_WARNED: set[str] = set()  # store files warned about: once each per process


def by_id_read_cost(store, rows: int, split: str | None = None) -> float:
    """About how many times its rows a pass of ``store.iter_chunks(split, by_id=True)``
    reads, in chunks of ``rows`` ids, against a pass in stored order (1: no more; None: the
    whole file). A chunk holds the split's rows among ``rows`` ids of the file, so a store in
    id order within each split reads as such even where the splits' ids interleave. A chunk
    stored as one run reads just its rows; any other reads each HDF5 chunk
    (``rows_per_chunk`` stored rows) that holds one of its rows."""
    # The reader's own id order over the file's rows (cached in the store, and read for the
    # chunks anyway): no second copy of the ids, and a TrainSubset's chunks use it too.
    positions, stored = store.id_positions(), store.rows_per_chunk
    n = len(positions)
    if split is None:
        return _rows_read(positions, rows, stored, n) / max(1, n)
    # The rows the reader keeps of the split (a TrainSubset's: its store's whole split).
    mask = np.zeros(n, dtype=bool)
    mask[store.split_rows(split)] = True
    by_id = _rows_read(positions, rows, stored, n, mask)
    in_stored_order = _rows_read(np.arange(n), rows, stored, n, mask)
    return by_id / max(1, in_stored_order)


def _rows_read(
    positions: np.ndarray, rows: int, stored: int, n: int, mask: np.ndarray | None = None
) -> int:
    """Stored rows read for the chunks of ``rows`` entries of ``positions`` (those of
    ``mask`` in each)."""
    read = 0
    for start in range(0, len(positions), rows):
        block = positions[start : start + rows]
        if mask is not None:
            block = block[mask[block]]
        if not len(block):
            continue
        if block[-1] - block[0] + 1 == len(block) and (np.diff(block) > 0).all():
            read += len(block)
        else:
            touched = np.unique(block // stored)
            read += np.minimum(stored, n - touched * stored).sum()
    return int(read)


def warn_far_from_id_order(store, rows: int, split: str | None = None) -> None:
    """Warn, once per store file, when the streamed heads' chunks of ``rows`` ids of
    ``split`` (None: every row) read ``_FAR_FROM_ID_ORDER`` times a pass in stored order or
    more (:func:`by_id_read_cost`). Under
    torchrun rank 0 alone says it: every rank reads the same file."""
    if getattr(store, "path", None) is None:
        return  # a source of chunks with no file behind it (fit_store reads any iter_chunks)
    if not current_ranks().is_main:
        return
    path = str(store.path)
    if path in _WARNED or (path, rows, split) in _CHECKED:
        return
    _CHECKED.add((path, rows, split))
    times = by_id_read_cost(store, rows, split)
    if times < _FAR_FROM_ID_ORDER:
        return
    _WARNED.add(path)
    warnings.warn(
        f"{path} is stored far from id order, so each pass of a streamed head over it reads "
        f"about {times:.0f} times its rows: its {math.ceil(len(store) / rows)} chunks of "
        f"{rows} rows hold the rows by id (the same images in another order train the same "
        "model), and each gathers its rows from across the file. To read each row once a "
        "pass, write the store with its images in id order (sort the manifest's rows by id "
        "and extract again), or raise chunk_rows: fewer chunks read the file fewer times.",
        stacklevel=2,
    )


def _log_loss(head: StreamingLinearHead) -> bool:
    return head.loss in ("log_loss", "modified_huber")


def check_chunk_rows(chunk_rows: int) -> int:
    """``chunk_rows`` as rows read at a time: a whole number >= 1 (int() read 2.5 rows as 2)."""
    if not is_count(chunk_rows):
        raise ConfigError(f"chunk_rows must be >= 1, a whole number; got {chunk_rows!r}.")
    return int(chunk_rows)


class StreamingLinearHead(ClassifierMixin, BaseEstimator):
    """Standardise, then a linear classifier by SGD over chunks (``loss`` as in SGDClassifier).

    Use :meth:`fit_store` for a FeatureStore (reads ``store.iter_chunks``), :meth:`fit_chunks`
    for any source of (X, y) chunks that can be read in a given order, or ``fit`` for arrays
    (chunked the same way). Each epoch reads the chunks in a new order drawn from
    ``random_state`` and shuffles rows within groups of ``buffer_chunks`` chunks.

    A store's chunks hold its rows by id, ``chunk_rows`` ids each, so a store listed far
    from id order (rows appended, or shuffled, after its ids were given) has each chunk
    gathered from many stored blocks: memory stays bounded, but a pass reads more of the
    file the more chunks there are: a pass over 60,000 rows listed in random order read
    about 15x slower than its stored blocks in 15 chunks and about 50x in 60, while a store
    in id order reads as fast as its stored blocks (``benchmarks/streamed_by_id_reads.py``).
    The streamed heads warn, once per store, where a pass reads its rows about
    4 times or more, and say how to read them once.
    """

    def __init__(
        self,
        loss: str = "log_loss",
        *,
        alpha: float = 1e-4,
        epochs: int = 10,
        chunk_rows: int = 4096,
        buffer_chunks: int = 8,
        random_state: int = 0,
        progress: bool = False,
    ):
        self.loss = loss
        self.alpha = alpha
        self.epochs = epochs
        self.chunk_rows = chunk_rows
        self.buffer_chunks = buffer_chunks
        self.random_state = random_state
        self.progress = progress

    def fit(self, X, y) -> StreamingLinearHead:
        X, y = validate_data(self, X, y)
        check_classification_targets(y)
        rows = check_chunk_rows(self.chunk_rows)
        return self.fit_chunks(
            _array_chunks(X, y, rows), math.ceil(len(X) / rows), classes=np.unique(y)
        )

    def fit_store(self, store, layer: str, split: str = "train") -> StreamingLinearHead:
        """Train on one split of a FeatureStore without loading it whole. Its chunks hold the
        rows by id (``iter_chunks(by_id=True)``), as every other head takes its rows in id
        order: the same images listed in another order train the same model."""
        rows = check_chunk_rows(self.chunk_rows)
        warn_far_from_id_order(store, rows, split)
        # The classes are those of the split's rows, as ``fit`` learns them: the store's whole
        # class list would give a class without a training row a column of predict_proba, and
        # let a split of one class through.
        return self.fit_chunks(
            lambda order: store.iter_chunks(layer, split, rows=rows, order=order, by_id=True),
            math.ceil(len(store) / rows),
        )

    def fit_chunks(
        self, chunks: ChunkReader, n_chunks: int, classes: np.ndarray | None = None
    ) -> StreamingLinearHead:
        """``chunks(order)`` returns an iterator over the (X, y) chunks whose indices (0 to
        ``n_chunks - 1``) are in ``order``, in that order; a chunk may be empty or skipped."""
        if not (is_count(self.epochs) and is_count(self.buffer_chunks)):  # int() cut 2.5 to 2
            raise ConfigError(
                "epochs and buffer_chunks must be >= 1, whole numbers; got "
                f"{self.epochs!r}, {self.buffer_chunks!r}."
            )
        scaler, seen, n_features = StandardScaler(), [], None
        for X, y in chunks(range(n_chunks)):  # pass 1: mean and variance, and the label set
            if len(y):
                scaler.partial_fit(X)
                seen.append(np.unique(y))
                n_features = X.shape[1]
        if n_features is None:
            raise ConfigError("The training chunks are empty; nothing to fit.")
        classes = np.unique(np.concatenate(seen)) if classes is None else np.asarray(classes)
        if len(classes) < 2:
            raise ConfigError(
                f"A classifier needs at least 2 classes; got {len(classes)} class "
                f"({classes.tolist()}). Check the labels of the training rows."
            )
        sgd = SGDClassifier(loss=self.loss, alpha=self.alpha, random_state=self.random_state)
        rng = np.random.default_rng(self.random_state)
        for _ in track(range(int(self.epochs)), desc="SGD epochs", enabled=self.progress):
            order = rng.permutation(n_chunks)
            for X, y in _shuffled(chunks(order), int(self.buffer_chunks), rng):
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
