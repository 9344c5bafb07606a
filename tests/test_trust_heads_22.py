"""Streamed heads: the logistic regression's torch threads follow the in-memory heads' rule
(``solver_threads``), by one chunk's matrix product; a store far from id order, which the
heads read many times a pass, is named once in a warning with the fix."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from conftest import record_calls

import featpipe.device
import featpipe.heads.torch_logreg as torch_logreg
from featpipe.heads.streamed_logreg import StreamingLogisticProbe
from featpipe.heads.streaming import StreamingLinearHead, by_id_read_cost
from featpipe.store import write_arrays

# The fits stop after a few L-BFGS steps: what they show is their threads and reads.
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture
def four_cores(monkeypatch):
    """A process allowed 4 cores, whatever this machine has; the threads torch is set to."""
    for module in (featpipe.device, torch_logreg):
        monkeypatch.setattr(module, "available_cores", lambda: 4)
    return record_calls(monkeypatch, torch, "set_num_threads")


def _rows(n: int = 600, dim: int = 64, classes: int = 10):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, dim)).astype(np.float32), np.arange(n) % classes


def test_small_problem_fits_on_one_thread(four_cores):
    # 100 rows x 64 features x 10 classes per chunk: far below 2**24 multiply-adds a thread.
    StreamingLogisticProbe(chunk_rows=100, max_iter=5, distributed=False).fit(*_rows())
    assert four_cores[0] == 1  # the fit's setting; the next call restores the caller's


def test_threads_count_one_chunk_not_the_pass(four_cores, monkeypatch):
    # One chunk: 100 x 64 x 10 = 64,000 multiply-adds, two threads' worth at 32,000 each; the
    # pass (600 rows) would ask for 12, capped at the 4 cores.
    monkeypatch.setattr(torch_logreg, "_MACS_PER_THREAD", 32_000)
    StreamingLogisticProbe(chunk_rows=100, max_iter=5, distributed=False).fit(*_rows())
    assert four_cores[0] == 2


def test_n_threads_given_is_used(four_cores):
    StreamingLogisticProbe(chunk_rows=100, max_iter=5, n_threads=3, distributed=False).fit(*_rows())
    assert four_cores[0] == 3


def _store(path, order: np.ndarray):
    """600 rows (all train) of 8 features, 100 rows to an HDF5 chunk, listed in ``order``."""
    X, y = _rows(600, 8, 3)
    ids = np.array([f"img{i:04d}" for i in range(600)])
    return write_arrays(path, {"pooled": X[order]}, y[order], ["train"] * 600, list("abc"),
                        ids=list(ids[order]), rows_per_chunk=100)  # fmt: skip


def _far_warnings(record) -> list[str]:
    return [str(w.message) for w in record if "far from id order" in str(w.message)]


def test_read_cost_follows_the_stored_order(tmp_path):
    in_order = _store(tmp_path / "sorted.h5", np.arange(600))
    backwards = _store(tmp_path / "backwards.h5", np.arange(600)[::-1])
    shuffled = _store(tmp_path / "shuffled.h5", np.random.default_rng(1).permutation(600))
    assert by_id_read_cost(in_order, 100) == 1.0  # each chunk of ids one stored slice
    assert by_id_read_cost(backwards, 100) == 1.0  # each within one HDF5 chunk
    assert by_id_read_cost(shuffled, 100) == 6.0  # each gathers from all 6 HDF5 chunks
    assert by_id_read_cost(shuffled, 600) == 1.0  # one chunk: the file read once


def test_store_far_from_id_order_warns_once_naming_the_fix(tmp_path):
    store = _store(tmp_path / "shuffled.h5", np.random.default_rng(1).permutation(600))
    head = StreamingLinearHead(chunk_rows=100, epochs=1)
    with pytest.warns(UserWarning, match="far from id order") as record:
        head.fit_store(store, "pooled")
    (message,) = _far_warnings(record)
    assert str(store.path) in message and "about 6 times its rows" in message
    assert "write the store with its images in id order" in message and "chunk_rows" in message
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        head.fit_store(store, "pooled")
        probe = StreamingLogisticProbe(chunk_rows=100, max_iter=5, distributed=False)
        probe.fit_store(store, "pooled")
    assert _far_warnings(again) == []  # once per store


def test_logistic_probe_warns_through_chunks_of_store(tmp_path):
    store = _store(tmp_path / "shuffled.h5", np.random.default_rng(2).permutation(600))
    probe = StreamingLogisticProbe(chunk_rows=100, max_iter=5, distributed=False)
    with pytest.warns(UserWarning, match="far from id order"):
        probe.fit_store(store, "pooled")


def test_store_in_id_order_does_not_warn(tmp_path):
    store = _store(tmp_path / "sorted.h5", np.arange(600))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        StreamingLinearHead(chunk_rows=100, epochs=1).fit_store(store, "pooled")
        StreamingLogisticProbe(chunk_rows=100, max_iter=5, distributed=False).fit_store(
            store, "pooled"
        )
    assert _far_warnings(record) == []
