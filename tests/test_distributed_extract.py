"""Extraction under torchrun: 2 gloo processes on the CPU fill one parted store.

Each rank gets half the cores (LOCAL_WORLD_SIZE), and the thread count changes the order of
fp32 sums in the forward pass: single-process references run with the cores of one rank, so
that bit-for-bit equality tests the store logic, not the BLAS."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
from test_store_parts import same_store

from featpipe.store.parts import parts_dir

REPO = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).with_name("extract_child.py")
DIGITS = [
    "extract", "digits", "--image-size", "32", "--chunk-rows", "16", "--limit-train", "300",
    "--limit-val", "100", "--limit-test", "100", "--workers", "0",
]  # fmt: skip
NOISE = ["extract", "noise", "--backbone", "toy", "--chunk-rows", "4", "--batch-size", "4"]
NOISE += ["--workers", "0", "--dtype", "float32", "--no-progress"]


def env(**extra: str) -> dict:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "FEATPIPE_PROGRESS": "lines",
        **extra,
    }


def one_rank_cores():
    """Pin a reference process to the cores one of 2 local ranks gets."""
    cores = sorted(os.sched_getaffinity(0))
    keep = set(cores[: max(1, len(cores) // 2)])
    return lambda: os.sched_setaffinity(0, keep)


def torchrun(*args: str, restarts: int = 0) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "--max-restarts", str(restarts), *args,
    ]  # fmt: skip


def reference(tmp_path: Path, argv: list[str], child: bool = False, **extra: str) -> Path:
    out = tmp_path / "single.h5"
    head = [sys.executable, str(CHILD), "cli"] if child else [sys.executable, "-m", "featpipe"]
    subprocess.run(
        [*head, *argv, "--out", str(out)],
        env=env(**extra),
        check=True,
        capture_output=True,
        preexec_fn=one_rank_cores(),
    )
    return out


def test_two_ranks_equal_one_process_bit_for_bit(tmp_path):
    out = tmp_path / "ranks.h5"
    done = subprocess.run(
        torchrun("-m", "featpipe", *DIGITS, "--out", str(out)),
        env=env(FEATPIPE_PROGRESS_INTERVAL="0.2"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # only rank 0 prints the run's result; progress is plain lines tagged with the rank
    assert done.stdout.count("features written to") == 1
    assert "\r" not in done.stderr and "[rank 1/2] extract ranks.h5" in done.stderr
    same_store(reference(tmp_path, DIGITS), out)
    with h5py.File(out, "r") as f:
        cost = json.loads(f.attrs["extraction"])
        assert f.attrs["layout"] == "parts" and len(f.attrs["part_chunks"]) - 1 == 8
    # 500 rows in 8 parts of 64 rows and one of 52: the ranks cannot get equal rows
    assert cost["images"] == 500 and set(cost["filled_by"]) <= {"rank 0/2", "rank 1/2"}


def wait_for_lock_note(part: Path, seconds: float = 120) -> int:
    """The pid of the process that holds ``part`` (its lock note), once it does."""
    note = part.with_name(part.name + ".lock.json")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            return int(json.loads(note.read_text())["pid"])
        except (OSError, ValueError, KeyError):
            time.sleep(0.05)
    raise AssertionError(f"no process took {part}")


def held_run(
    tmp_path: Path, out: Path, restarts: int, extra: list[str] = ()
) -> tuple[subprocess.Popen, Path, int]:
    """A 2-rank run over 96 noise images (6 parts of 16 rows) that stops inside part 2 (at
    row 41) while the file ``hold`` exists; returns it with the pid of the rank holding it.
    ``extra``: more arguments of the command."""
    hold = tmp_path / "hold"
    hold.touch()
    noise = json.dumps({"n": 96, "hold_at": 41, "hold": str(hold)})
    run = subprocess.Popen(
        torchrun(str(CHILD), "cli", *NOISE, *extra, "--out", str(out), restarts=restarts),
        env=env(NOISE=noise),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return run, hold, wait_for_lock_note(parts_dir(out) / "part-00002.h5")


def test_a_killed_rank_is_restarted_and_the_store_is_equal(tmp_path):
    out = tmp_path / "ranks.h5"
    run, hold, pid = held_run(tmp_path, out, restarts=1)
    os.kill(pid, signal.SIGKILL)  # a lost node: no chance to drain
    hold.unlink()
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr[-12000:]
    same_store(reference(tmp_path, NOISE, child=True, NOISE='{"n": 96}'), out)


def test_a_preempted_run_resumes_with_one_process(tmp_path):
    out = tmp_path / "ranks.h5"
    run, hold, pid = held_run(tmp_path, out, restarts=0)
    time.sleep(0.5)
    os.kill(pid, signal.SIGTERM)  # preempted: the rank drains its writer and exits 128 + 15
    _, stderr = run.communicate(timeout=120)
    assert run.returncode != 0
    assert "interrupted: this process filled" in stderr, stderr[-3000:]
    assert "exitcode  : 143" in stderr  # what torchrun (or a job array) sees
    with h5py.File(out, "r") as f:
        assert not f.attrs["complete"]
    hold.unlink()
    resumed = subprocess.run(
        [sys.executable, str(CHILD), "cli", *NOISE, "--out", str(out)],
        env=env(NOISE='{"n": 96}'),
        capture_output=True,
        text=True,
        preexec_fn=one_rank_cores(),
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    same_store(reference(tmp_path, NOISE, child=True, NOISE='{"n": 96}'), out)


PIPELINE = """
name = "ranks"
n_boot = 50
device = "cpu"
[source]
data = "digits"
limits = { train = 120, val = 60, test = 90 }
[features]
backbones = ["toy"]
image_size = 16
batch_size = 8
workers = 0
cache_dir = "CACHE"
[probes]
heads = ["logreg", "knn", "logreg_stream"]
grids.logreg = { C = [0.1, 1.0] }
grids.logreg_stream = { C = [0.1, 1.0] }
[finetune]
modes = ["head"]
epochs = 1
batch_size = 16
"""


def test_a_pipeline_under_torchrun_extracts_on_every_rank_and_reports_once(tmp_path):
    toml = tmp_path / "p.toml"
    toml.write_text(PIPELINE.replace("CACHE", str(tmp_path / "cache")))
    out = tmp_path / "run"
    done = subprocess.run(
        torchrun(str(CHILD), "cli", "run", str(toml), "--out", str(out)),
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    # rank 0 fits the probes alone (logreg_stream does not wait for the ranks that left);
    # the fine-tune ran on both ranks
    probes = ["toy/knn@pooled", "toy/logreg@pooled", "toy/logreg_stream@pooled"]
    assert sorted(r["method"] for r in rows if r["method"] in probes) == probes
    (tuned,) = [r for r in rows if r["method"] not in probes]
    assert tuned["world_size"] == 2
    assert (out / "report.md").is_file() and done.stdout.count("report: ") == 1
    (store,) = (tmp_path / "cache").glob("*.h5")
    with h5py.File(store, "r") as f:
        assert f.attrs["layout"] == "parts" and f.attrs["complete"]
