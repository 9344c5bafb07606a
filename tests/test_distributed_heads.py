"""Heads under torchrun (2 gloo processes on CPU): the streamed logistic regression splits its
passes over the store between the ranks and gives the result of one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_heads_streamed import a_store

from featpipe.cli import main
from featpipe.device import resolve_device

REPO = Path(__file__).resolve().parents[1]
CHILD = str(REPO / "tests" / "streamed_logreg_child.py")


def _run(command: list[str], out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = dict(np.load(out))
    found["rows_read"] = [
        int(Path(f"{out}.rows-{rank}").read_text())
        for rank in range(2)
        if Path(f"{out}.rows-{rank}").exists()
    ]
    return found


@pytest.mark.slow
def test_two_ranks_give_the_streamed_logreg_of_one(tmp_path) -> None:
    # 1,000 rows, 40 a chunk: 9 chunks of train rows, an uneven share for 2 ranks.
    store = tmp_path / "s.h5"
    a_store(store, n=1000)
    one = _run([sys.executable, CHILD, str(store), str(tmp_path / "one.npz")], tmp_path / "one.npz")
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
    ]
    two = _run([*torchrun, CHILD, str(store), str(tmp_path / "two.npz")], tmp_path / "two.npz")
    # Each rank read its own share of the rows, and together every row once per pass.
    (alone,), (first, second) = one["rows_read"], two["rows_read"]
    assert first > 0 and second > 0 and first + second == alone
    np.testing.assert_array_equal(two["curve"], one["curve"])
    assert two["best_C"] == one["best_C"]
    np.testing.assert_array_equal(two["test_pred"], one["test_pred"])
    for name in ("mean", "scale"):
        np.testing.assert_allclose(two[name], one[name], rtol=1e-12)
    for name in ("coef", "intercept"):
        np.testing.assert_allclose(two[name], one[name], rtol=1e-5, atol=1e-6)


def test_cpu_under_torchrun_is_cpu(monkeypatch) -> None:
    # resolve_device("cpu") on a rank of a torchrun job once answered cuda:LOCAL_RANK.
    for name, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "x",
                        "MASTER_PORT": "1"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    assert resolve_device("cpu") == torch.device("cpu")


def test_probe_writes_only_on_rank_0(tmp_path, monkeypatch, capsys) -> None:
    # Every rank of `torchrun -m featpipe probe` fits; only rank 0 prints and writes.
    store = tmp_path / "s.h5"
    a_store(store, n=300)
    argv = ["probe", str(store), "--heads", "knn", "--device", "cpu"]
    outputs = ["--out", str(tmp_path / "r.json"), "--save-dir", str(tmp_path / "heads")]
    for name, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "x",
                        "MASTER_PORT": "1"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    assert main([*argv, *outputs]) == 0
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "heads").exists()
    assert "knn" not in capsys.readouterr().out
    monkeypatch.setenv("RANK", "0")
    assert main([*argv, *outputs]) == 0
    assert (tmp_path / "r.json").exists() and "knn" in capsys.readouterr().out
