"""The torch L-BFGS heads choose their CPU threads by the problem's size: a small problem (a
probe's CV fold of 42 rows) runs on one thread, where a thread per core made every op wait for
a busy core (247 s against 8.8 s for one fold's C path on a loaded 2-core machine)."""

import numpy as np
import pytest
import torch

import featpipe.device
import featpipe.heads.torch_logreg as torch_logreg
from featpipe.heads.registry import make_head
from featpipe.heads.selection import select_and_fit
from featpipe.heads.torch_logreg import TorchLogisticRegression, _Problem
from featpipe.heads.torch_svm import TorchLinearSVC


@pytest.fixture
def four_cores(monkeypatch) -> list[int]:
    """A machine of 4 cores; the torch threads of every pass over the rows, recorded."""
    monkeypatch.setattr(featpipe.device, "available_cores", lambda: 4)
    monkeypatch.setattr(torch_logreg, "available_cores", lambda: 4, raising=False)
    threads = []
    real = _Problem.loss_and_grad

    def recorded(self, *args):
        threads.append(torch.get_num_threads())
        return real(self, *args)

    monkeypatch.setattr(_Problem, "loss_and_grad", recorded)
    return threads


def _rows(n: int, dim: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = np.arange(n) % classes
    return rng.normal(size=(n, dim)).astype(np.float32) + y[:, None], y


def test_a_small_probe_table_runs_its_c_path_on_one_thread(four_cores):
    X, y = _rows(42, 64, 3)  # no val split: 5-fold CV, each fold a C path
    select_and_fit("logreg", {"train": (X, y)}, grid={"C": [0.01, 1.0]}, device="cpu")
    assert four_cores and set(four_cores) == {1}


@pytest.mark.parametrize("cls", [TorchLogisticRegression, TorchLinearSVC])
def test_a_small_fit_runs_on_one_thread(four_cores, cls):
    cls(device="cpu").fit(*_rows(42, 64, 3))
    assert four_cores and set(four_cores) == {1}


def test_given_threads_are_kept(four_cores):
    TorchLogisticRegression(device="cpu", n_threads=3).fit(*_rows(42, 64, 3))
    assert set(four_cores) == {3}


def test_large_problems_get_a_thread_per_core(monkeypatch):
    monkeypatch.setattr(torch_logreg, "available_cores", lambda: 4)
    assert torch_logreg.solver_threads(None, 45_000, 1280, 10) == 4  # CIFAR-10 features
    assert torch_logreg.solver_threads(None, 10_000, 1280, 2) == 1  # one weight row for two classes
    assert torch_logreg.solver_threads(None, 1079, 1280, 10) == 1  # the README's digits demo
    assert torch_logreg.solver_threads(2, 42, 1280, 3) == 2


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # C=1e-6
def test_digits_choice_is_unchanged(digits):
    """The chosen C, its val and test accuracy on digits, as a thread per core (2) chose them."""
    X_tr, y_tr, X_te, y_te = digits
    source = {
        "train": (X_tr[:1000], y_tr[:1000]),
        "val": (X_tr[1000:], y_tr[1000:]),
        "test": (X_te, y_te),
    }
    result = select_and_fit(make_head("logreg", device="cpu"), source)
    assert result.params["C"] == pytest.approx(0.5623413251903491)
    assert result.val_accuracy == pytest.approx(251 / 257)
    assert result.test_accuracy == pytest.approx(527 / 540)
