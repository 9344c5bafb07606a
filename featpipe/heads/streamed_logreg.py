"""The logistic regression on features larger than RAM: full-batch L-BFGS whose closure streams
the training rows chunk by chunk, summed over the ranks of a torchrun job.

It minimises exactly the objective of the in-memory head (``torch_logreg.py``: scikit-learn's
``LogisticRegression``), with the same L-BFGS and the same warm-started C path: only where the
rows come from changes (:class:`_StreamedProblem` overrides ``batches`` and ``reduce``). Each
function evaluation reads the split once, so memory holds one chunk at a time, and each costs a
pass over the data: the price of bounded memory. Under torchrun every rank reads its share of
the chunks and the loss and gradient are all-reduced (gloo): every rank takes the same L-BFGS
steps, and N ranks give the result of one, up to the order of floating-point sums.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import partial

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import validate_data

from featpipe.device import on_device, resolve_device, torch_threads
from featpipe.distributed import Ranks, progress_bar, refuse_other_settings
from featpipe.errors import ConfigError
from featpipe.heads.chunks import (
    Chunks,
    all_reduce_sum,
    fitted_preprocessor,
    job_ranks,
    row_statistics,
)
from featpipe.heads.estimators import LogisticProbe
from featpipe.heads.streaming import check_chunk_rows
from featpipe.heads.torch_logreg import (
    LinearPath,
    TorchLogisticRegression,
    _Problem,
    run_path,
    solver_threads,
)


class _StreamedProblem(_Problem):
    """The logistic objective over rows read chunk by chunk (``share`` of ``chunks``, after
    ``transform``), summed over the ranks."""

    def __init__(
        self,
        chunks: Chunks,
        transform,
        classes: np.ndarray,
        n: int,
        device: torch.device,
        ranks: Ranks,
    ):
        self._shape(n, chunks.dim, len(classes), device)
        self.chunks, self.transform, self.classes, self.ranks = chunks, transform, classes, ranks

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for X, y in self.chunks.read(self.chunks.share(self.ranks)):
            if len(y):
                yield self.tensors(X, y)

    def tensors(self, X: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """One chunk, preprocessed, on the device; labels as class indices (-1: a label the
        training rows do not hold)."""
        Z = np.ascontiguousarray(self.transform(X), np.float32)
        index = np.searchsorted(self.classes, y).clip(0, len(self.classes) - 1)
        index = np.where(self.classes[index] == y, index, -1)
        return (
            torch.as_tensor(Z, device=self.device),
            torch.as_tensor(index, dtype=torch.long, device=self.device),
        )

    def reduce(self, total: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(total, self.ranks)

    def streamed_accuracy(self, W: torch.Tensor, chunks: Chunks) -> float:
        """Accuracy of weights W on every rank's share of ``chunks``."""
        counts = torch.zeros(2, dtype=torch.float64)
        for X, y in chunks.read(chunks.share(self.ranks)):
            if len(y):
                Xt, yt = self.tensors(X, y)
                hits = (self.logits(Xt, W[:, :-1], W[:, -1]).argmax(1) == yt).sum().item()
                counts += torch.tensor([hits, len(y)], dtype=torch.float64)
        correct, total = all_reduce_sum(counts, self.ranks).tolist()
        return correct / total if total else float("nan")


def streamed_logreg_path(
    train: Chunks,
    Cs: Sequence[float],
    *,
    val: Chunks | None = None,
    preprocess: str = "standardize",
    tol: float = 1e-4,
    max_iter: int = 1000,
    device: str = "auto",
    n_threads: int | None = None,
    distributed: bool = True,
    progress: bool = False,
):
    """The warm-started C path of the logistic regression on streamed rows (``Cs`` increasing),
    with the validation accuracy of each solution on ``val`` when given. Returns the
    :class:`LinearPath` and the fitted preprocessing step (statistics from ``train``).

    Under torchrun with ``distributed`` every rank must make the same call: the ranks share the
    chunks and sum the objective. Without torchrun, or with ``distributed=False``, this process
    reads every chunk itself."""
    if len(Cs) == 0:
        raise ConfigError("The C path of Logistic regression needs at least one C value.")
    ranks = job_ranks(distributed)
    shapes = [None if c is None else (c.n_chunks, c.dim, c.labels.tolist()) for c in (train, val)]
    call = {"Cs": list(Cs), "preprocess": preprocess, "tol": tol, "max_iter": max_iter}
    refuse_other_settings({**call, "chunks": shapes}, "logistic regression")  # same passes
    stats = row_statistics(train, ranks, moments=preprocess == "standardize")
    if len(stats.classes) < 2:
        raise ConfigError(
            f"Logistic regression needs samples of at least 2 classes; got "
            f"{len(stats.classes)} class ({stats.classes.tolist()}). Check the labels of the "
            "training split."
        )
    preprocessor = fitted_preprocessor(preprocess, None, stats, train.dim)
    torch_device = resolve_device(device)
    # Threads by one chunk's matrix product, as the in-memory heads choose theirs by a pass:
    # a small product runs best on one thread.
    threads = solver_threads(n_threads, stats.chunk_rows, train.dim, len(stats.classes))
    with on_device(torch_device), torch_threads(threads):
        problem = _StreamedProblem(
            train, preprocessor.transform, stats.classes, stats.n, torch_device, ranks
        )
        accuracy = None if val is None else partial(problem.streamed_accuracy, chunks=val)
        bar = progress_bar(
            len(Cs), desc="C path (streamed)", unit="C", enabled=progress and ranks.is_main
        )
        path = run_path(
            problem,
            Cs,
            stats.classes,
            TorchLogisticRegression,
            accuracy,
            tol=tol,
            max_iter=max_iter,
            progress=bar,
        )
    return path, preprocessor


class StreamingLogisticProbe(LogisticProbe):
    """:class:`LogisticProbe` (the same objective, preprocessing and parameters) trained on rows
    streamed ``chunk_rows`` at a time, for features larger than RAM: :meth:`fit_store` reads
    a FeatureStore's splits chunk by chunk, ``fit`` reads arrays the same way.

    Each L-BFGS function evaluation is one pass over the rows, so memory is bounded by a chunk
    and the fit costs a pass per evaluation. Under torchrun (``distributed=True``, every rank
    calling the same fit) the ranks share the chunks and all-reduce the loss and gradient.
    Standardisation uses the mean and standard deviation of the training rows, computed in a
    first pass; ``pca`` is not available (it needs every row at once). A store's chunks hold
    its rows by id (:meth:`Chunks.of_store`), so the same images listed in another order
    train the same head; a store far from id order costs more reading per pass (see
    :class:`~featpipe.heads.streaming.StreamingLinearHead`)."""

    streams_store = True  # select_and_fit fits it with fit_store on a FeatureStore

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
        chunk_rows: int = 4096,
        distributed: bool = True,
    ):
        super().__init__(
            C,
            preprocess=preprocess,
            pca=pca,
            tol=tol,
            max_iter=max_iter,
            device=device,
            n_threads=n_threads,
        )
        self.chunk_rows = chunk_rows
        self.distributed = distributed

    def fit(self, X, y) -> StreamingLogisticProbe:
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        rows = check_chunk_rows(self.chunk_rows)
        return self._fit(Chunks.of_arrays(X, y, rows))

    def fit_store(
        self, store, layer: str, splits: Sequence[str] = ("train",), progress: bool = False
    ) -> StreamingLogisticProbe:
        """Train on the rows of ``splits`` of one layer of a FeatureStore, chunk by chunk."""
        rows = check_chunk_rows(self.chunk_rows)
        self._fit(Chunks.of_store(store, layer, splits, rows), progress)
        self.n_features_in_ = store.layer_info(layer)["dim"]
        return self

    def _fit(self, chunks: Chunks, progress: bool = False) -> StreamingLogisticProbe:
        self._check_pca()
        path, self.preprocessor_ = self._path(chunks, [self.C], progress=progress)
        params = {k: v for k, v in self._classifier_params().items() if k != "C"}
        self.classifier_ = path.estimator(0, **params)
        self.classes_ = self.classifier_.classes_
        self.n_iter_ = self.classifier_.n_iter_
        return self

    def store_path(
        self, store, layer: str, Cs: Sequence[float], progress: bool = False
    ) -> LinearPath:
        """The warm-started C path fitted on the store's train split, with the validation
        accuracy of each C on its val split and the log loss of the Cs tied at the best (used
        by ``select_and_fit``, which then refits none of them)."""
        from featpipe.heads.selection import tied_log_loss, val_log_loss  # late: it imports us

        rows = check_chunk_rows(self.chunk_rows)
        self._check_pca()
        val = Chunks.of_store(store, layer, ["val"], rows)
        path, preprocessor = self._path(
            Chunks.of_store(store, layer, ["train"], rows), Cs, val=val, progress=progress
        )

        def loss_of(i: int) -> float:  # every rank reads the whole val split, as selection
            est, total, n = path.estimator(i), 0.0, 0
            for X, y in val.read(range(val.n_chunks)):
                if len(y):
                    total += val_log_loss(est, preprocessor.transform(X), y) * len(y)
                    n += len(y)
            return total / n

        path.val_log_loss = tied_log_loss(TorchLogisticRegression, path.val_accuracy, loss_of)
        return path

    def _path(self, chunks: Chunks, Cs, **kwargs):
        est = TorchLogisticRegression(**self._classifier_params())
        est._check_params()
        return streamed_logreg_path(
            chunks,
            Cs,
            preprocess=self.preprocess,
            tol=est.tol,
            max_iter=int(est.max_iter),
            device=est.device,
            n_threads=est.n_threads,
            distributed=self.distributed,
            **kwargs,
        )

    def _classifier_params(self) -> dict:
        return {k: getattr(self, k) for k in ("C", "tol", "max_iter", "device", "n_threads")}

    def _check_pca(self) -> None:
        if self.pca is not None:
            fitted_preprocessor(self.preprocess, self.pca, None, 0)  # raises, saying why

    def _make_classifier(self, n_samples: int | None) -> BaseEstimator:
        return TorchLogisticRegression(**self._classifier_params())
