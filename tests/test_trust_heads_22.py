"""Streamed heads: the logistic regression's torch threads follow the in-memory heads' rule
(``solver_threads``), by one chunk's matrix product."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import featpipe.device
import featpipe.heads.torch_logreg as torch_logreg
from featpipe.heads.streamed_logreg import StreamingLogisticProbe
from tests.conftest import record_calls

# The fits stop after a few L-BFGS steps: what they show is their threads.
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
