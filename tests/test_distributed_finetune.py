"""DDP fine-tuning: 2 ranks under torchrun on the CPU (gloo), and the pieces it is made of.

The torchrun tests share one uninterrupted 2-rank run (``ddp_run``) of tests/ddp_finetune_child.py:
its validation must equal a single-process evaluation of the weights it saved, and runs that
were interrupted and resumed (under DDP, or changing between 1 and 2 processes) must end
where they should.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from ddp_finetune_child import N_TRAIN, N_VAL, PARAMS, source
from torch import nn

from featpipe.backbones import get_backbone
from featpipe.device import available_cores
from featpipe.errors import ConfigError
from featpipe.finetune import FineTuner, Mode, ddp
from featpipe.finetune.callbacks import Callback
from featpipe.finetune.freezing import set_train_mode

REPO = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).with_name("ddp_finetune_child.py")
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
# Image loads per rank of 2: a validation pass (rank 1 scores rows[1::2]) and a training epoch
# (each rank gets half of train; the batch of 8 is 4 per rank).
VAL_LOADS, EPOCH_LOADS = N_VAL // 2, N_TRAIN // 2


def torchrun(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return subprocess.run(
        [*command, "--nproc-per-node", "2", *map(str, args)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def alone(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(CHILD), *map(str, args)], env=ENV, timeout=240, capture_output=True
    )


def history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> tuple[Path, dict]:
    """One uninterrupted 2-rank fine-tune: its run folder and what rank 0 saved."""
    root = tmp_path_factory.mktemp("ddp")
    done = torchrun(CHILD, root / "run", root / "out.pt")
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "run", torch.load(root / "out.pt", weights_only=True)


@pytest.fixture
def one_thread():
    """torch on one thread, as in the children (the same reduction order), then as it was."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def single(one_thread) -> FineTuner:
    """A single-process tuner over the same source, to evaluate saved weights with."""
    return FineTuner("toy", **{**PARAMS, "epochs": 0}).fit(source())


def test_ddp_validation_equals_a_single_process_evaluation(ddp_run, single):
    run_dir, out = ddp_run
    rows = history(run_dir)
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3] and N_VAL % 2  # an uneven split
    assert {r["world_size"] for r in rows} == {2}
    # Both checkpoints hold plain state dicts (no DDP "module." prefix) that a single process
    # loads; scored alone, they give the metrics the 2 ranks recorded for their epochs.
    for name, epoch in (("best.pt", out["best_epoch"]), ("last.pt", rows[-1]["epoch"])):
        single.model_.load_state_dict(torch.load(run_dir / name, weights_only=True)["model"])
        metrics = single.evaluate("val", n_boot=0)
        assert metrics["n"] == N_VAL
        assert metrics["top1"] == rows[epoch]["val_accuracy"]
        assert metrics["log_loss"] == pytest.approx(rows[epoch]["val_loss"], rel=1e-6)
    # The test predictions gathered from both ranks are those of one process, in row order.
    single.model_.load_state_dict(out["model"])
    alone_proba = single.predict_proba("test")
    np.testing.assert_allclose(out["test_proba"].numpy(), alone_proba, rtol=1e-5, atol=1e-7)


def test_a_preempted_ddp_run_resumes_to_the_same_weights(ddp_run, tmp_path):
    _, uninterrupted = ddp_run
    # SIGTERM on rank 1 in the middle of epoch 2, after epoch 1's checkpoint: it stops
    # (preempted: exit 143, saying what it kept), the job fails, the same command resumes it.
    kill_at = VAL_LOADS + EPOCH_LOADS + VAL_LOADS + 10
    stopped = torchrun(CHILD, tmp_path / "run", tmp_path / "out.pt", kill_at, "TERM")
    assert stopped.returncode != 0
    assert "interrupted: epoch 1 of 3 done" in stopped.stderr
    assert [r["epoch"] for r in history(tmp_path / "run")] == [0, 1]

    resumed = torchrun(CHILD, tmp_path / "run", tmp_path / "out.pt")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    assert out["start"] == 1
    for key, value in uninterrupted["model"].items():
        assert torch.equal(out["model"][key], value), key
    assert history(tmp_path / "run")[-1]["val_loss"] == uninterrupted["history"][-1]["val_loss"]


def test_a_killed_rank_restarted_by_torchrun_resumes_to_the_same_weights(ddp_run, tmp_path):
    """torchrun --max-restarts 1 restarts both workers after a SIGKILL mid-epoch 2; their
    new process group must come up (it read the dead workers' addresses before: see
    test_distributed_env.py -k elastic), and the run resumes from epoch 1's checkpoint."""
    _, uninterrupted = ddp_run
    kill_at = VAL_LOADS + EPOCH_LOADS + VAL_LOADS + 10
    restarts = ("--max-restarts", "1", "--monitor-interval", "0.5")
    done = torchrun(*restarts, CHILD, tmp_path / "run", tmp_path / "out.pt", kill_at)
    assert done.returncode == 0, done.stderr[-3000:]
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    assert out["start"] == 1
    for key, value in uninterrupted["model"].items():
        assert torch.equal(out["model"][key], value), key


def test_checkpoints_move_between_one_process_and_ddp(tmp_path):
    run, out = tmp_path / "run", tmp_path / "out.pt"
    # One process, killed in epoch 2 after epoch 1's checkpoint ...
    single_loads = N_VAL + N_TRAIN + N_VAL + 10
    assert alone(run, out, single_loads).returncode == -9
    # ... resumed on 2 ranks, rank 1 killed in epoch 3 ...
    killed = torchrun(CHILD, run, out, EPOCH_LOADS + VAL_LOADS + 10)
    assert killed.returncode != 0
    # ... and finished by one process again.
    done = alone(run, out)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = history(run)
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    assert [r["world_size"] for r in rows] == [1, 1, 2, 1]
    assert torch.load(out, weights_only=True)["start"] == 2


def test_cli_finetune_under_torchrun_writes_one_row(split_image_folder, tmp_path):
    run_dir = tmp_path / "run"
    args = f"finetune --data {split_image_folder} --backbone toy --epochs 1 --batch-size 4"
    done = torchrun(
        REPO / "tests" / "finetune_child.py", "cli", 0, *args.split(), "--run-dir", run_dir
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("results in") == 1  # rank 0 alone prints run-level lines
    assert done.stdout.count("epoch   1/1") == 1
    (row,) = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert row["world_size"] == 2
    assert [h["world_size"] for h in row["history"]] == [2, 2]
    assert json.loads((run_dir / "metrics.json").read_text())["world_size"] == 2


# ------------------------------------------------------------------ without torchrun


def test_rows_come_back_in_order_from_any_number_of_ranks():
    n, values = 11, np.arange(11 * 2, dtype=np.float32).reshape(11, 2)
    for world in (1, 2, 3, 4, 11, 13):
        width = -(-n // world)
        positions, shares = [], []
        for r in range(world):
            mine = np.arange(r, n, world)  # what my_rows gives rank r
            pos = np.full(width, -1)
            pos[: len(mine)] = mine
            share = np.zeros((width, 2), np.float32)
            share[: len(mine)] = values[mine]
            positions.append(pos)
            shares.append(share)
        np.testing.assert_array_equal(ddp.assemble(positions, shares, n), values)


def test_a_row_missing_or_repeated_is_not_assembled():
    values = [np.ones((2, 1)), np.ones((2, 1))]
    with pytest.raises(RuntimeError, match="missing \\[2\\]"):
        ddp.assemble([np.array([0, 1]), np.array([1, -1])], values, 3)


@pytest.fixture
def one_rank_group(tmp_path):
    """A 1-process gloo group, as torchrun --nproc-per-node 1 makes."""
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_collectives_in_a_one_rank_group(one_rank_group):
    assert ddp.active() and ddp.world_size() == 1 and ddp.is_main()
    proba = np.random.default_rng(0).random((5, 3)).astype(np.float32)
    rows = np.array([4, 8, 15, 16, 23])
    assert np.array_equal(ddp.my_rows(rows), rows)
    np.testing.assert_array_equal(ddp.gather_rows(proba, 5), proba)
    np.testing.assert_array_equal(ddp.gather_rows(proba, 5, everywhere=False), proba)
    assert ddp.from_main({"stop": True}) == {"stop": True}
    assert ddp.all_sum(torch.tensor([2.5, 3.0])).tolist() == [2.5, 3.0]


class Threads(Callback):
    """Records the torch CPU threads training runs on."""

    def on_fit_start(self, tuner):
        self.threads = torch.get_num_threads()


def test_fit_in_a_one_rank_group_trains_ddp_and_records_it(one_rank_group, one_thread):
    threads = Threads()
    params = {**PARAMS, "epochs": 1, "callbacks": [threads]}
    tuner = FineTuner("toy", **params).fit(source())
    assert tuner.world_size_ == 1
    assert [h["world_size"] for h in tuner.history_] == [1, 1]
    assert not any(k.startswith("module.") for k in tuner.model_.state_dict())
    # On the CPU a rank trains on its share of the cores, then the caller's setting returns.
    assert threads.threads == available_cores() and torch.get_num_threads() == 1


def test_the_global_batch_must_divide_among_the_ranks():
    assert ddp.per_rank_batch(32, 4) == 8
    with pytest.raises(ConfigError, match=r"batch_size 30 is the global batch.*multiple of 4"):
        ddp.per_rank_batch(30, 4)


def test_sync_bn_converts_batch_norm_on_gpus_and_is_refused_on_the_cpu():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    keys = set(model.state_dict())
    with pytest.raises(ConfigError, match="SyncBatchNorm runs only on"):
        ddp.convert_sync_bn(model, torch.device("cpu"))
    synced = ddp.convert_sync_bn(model, torch.device("cuda", 0))  # conversion needs no GPU
    assert isinstance(synced[1], nn.SyncBatchNorm) and set(synced.state_dict()) == keys


@pytest.mark.parametrize(
    ("spec", "mode"),
    [("toy", "bn"), ("toy", "lpft"), ("torchvision:resnet18@none", "partial:1")],
)
def test_sync_bn_keeps_frozen_batch_norm_in_eval_mode(spec, mode, monkeypatch):
    # FineTuner._build as under DDP on GPUs: SyncBatchNorm replaces every batch norm, and the
    # layers the mode keeps fixed must be the new ones that stay in eval mode.
    convert = ddp.convert_sync_bn
    monkeypatch.setattr(ddp, "active", lambda: True)
    monkeypatch.setattr(ddp, "convert_sync_bn", lambda m, d: convert(m, torch.device("cuda", 0)))
    tuner = FineTuner(spec, **{**PARAMS, "mode": mode, "sync_bn": True})
    tuner.backbone_, tuner.classes_ = get_backbone(spec), np.arange(3)
    tuner.device_ = torch.device("cpu")
    tuner._build(Mode.parse(mode), steps=4, fitted_probe=None)
    set_train_mode(tuner.model_, tuner.frozen_)
    norms = {
        n: m
        for n, m in tuner.model_.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    }
    assert norms and all(isinstance(m, nn.SyncBatchNorm) for m in norms.values())
    training = sorted(n for n, m in norms.items() if m.training)
    # lpft: every batch norm keeps the probe's statistics; partial:1 freezes ResNet's stem.
    assert training == ([n for n in norms if n != "bn1"] if mode == "partial:1" else [])
