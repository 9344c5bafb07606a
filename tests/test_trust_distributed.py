"""Trust review of the torchrun paths: ranks that disagree must fail with a message, never hang.

Each test runs 2 gloo ranks on the CPU under torchrun, in a session of its own that is killed
whole when it runs past its time (a hung rank would otherwise outlive the test).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
from test_distributed_extract import NOISE, held_run, reference
from test_store_parts import same_store

from featpipe.device import available_cores
from featpipe.distributed import Ranks, current_ranks, under_torchrun
from featpipe.errors import ConfigError
from featpipe.store import FeatureStore
from featpipe.store.parts import parts_dir

REPO = Path(__file__).resolve().parents[1]

# extract() of 24 noise images with the toy backbone on every rank; rank 1 adds the keyword
# arguments in $RANK1_OPTIONS (JSON) to its call.
EXTRACT_CALL = """
import json, os, sys
sys.path.insert(0, {tests!r})
from extract_child import NoiseSource
from featpipe.distributed import current_ranks
from featpipe.extract import extract

ranks = current_ranks()
options = dict(out=sys.argv[1], batch_size=4, workers=0, device="cpu", dtype="float32",
               progress=False)
if ranks.rank == 1:
    options.update(json.loads(os.environ["RANK1_OPTIONS"]))
store = extract(NoiseSource(24), "toy", ["pooled"], **options)
print(f"rank {{ranks.rank}} complete {{store.extraction['complete']}}", flush=True)
""".format(tests=str(REPO / "tests"))


def torchrun(script: Path, *args: str, timeout: float = 60, **extra: str):
    """(returncode, stdout, stderr) of 2 ranks running ``script``; the whole session is
    killed after ``timeout`` seconds and the test fails as hung."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", "2", "--monitor-interval", "0.5", str(script), *args]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra}
    job = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = job.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)
        out, err = job.communicate()
        pytest.fail(f"the ranks hung for {timeout} s:\n{out[-2000:]}\n{err[-2000:]}")
    return job.returncode, out, err


def test_ranks_may_differ_in_progress_only_rank_0_showing_it(tmp_path):
    """A script that shows progress on rank 0 alone (progress=rank == 0) hung: every option
    was part of the keys the ranks meet under, so rank 1 waited for a plan never published."""
    script = tmp_path / "call.py"
    script.write_text(EXTRACT_CALL)
    out = tmp_path / "store.h5"
    rc, stdout, stderr = torchrun(script, str(out), RANK1_OPTIONS=json.dumps({"progress": True}))
    assert rc == 0, stderr[-3000:]
    assert "rank 0 complete True" in stdout and "rank 1 complete" in stdout
    assert FeatureStore(out).complete


def test_a_rank_with_other_settings_fails_naming_them(tmp_path):
    """Settings that change what is written (here the dtype) must agree: the rank that
    differs says which, rather than waiting forever; rank 0 completes the store alone."""
    script = tmp_path / "call.py"
    script.write_text(EXTRACT_CALL)
    out = tmp_path / "store.h5"
    rc, stdout, stderr = torchrun(script, str(out), RANK1_OPTIONS=json.dumps({"dtype": "float16"}))
    assert rc != 0
    assert "dtype" in stderr and "'float32'" in stderr and "'float16'" in stderr
    assert "rank 0 complete True" in stdout
    assert FeatureStore(out).complete


# ------------------------------------------------------------------ torchrun's environment

LAUNCHED = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
LAUNCHED |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


@pytest.mark.parametrize("missing", ["MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"])
def test_one_of_several_processes_without_torchruns_variables_is_refused(missing, monkeypatch):
    """RANK=1 WORLD_SIZE=2 without the rest (a launcher script that exports only some) made
    this process rank 0 of 1: each of the N processes worked alone on everything, writing
    the same run folder and store."""
    for name, value in LAUNCHED.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv(missing)
    with pytest.raises(ConfigError, match=f"WORLD_SIZE=2.*{missing}"):
        current_ranks()
    with pytest.raises(ConfigError, match=missing):
        under_torchrun()


def test_a_world_size_of_one_without_torchrun_is_a_single_process(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    assert current_ranks() == Ranks() and not under_torchrun()


def test_a_local_world_size_of_0_is_refused_not_divided_by(monkeypatch):
    for name, value in LAUNCHED.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "0")
    with pytest.raises(ConfigError, match="LOCAL_WORLD_SIZE=0"):
        available_cores()


# ------------------------------------------------------------------ elastic restarts


def test_an_elastic_restart_with_overwrite_keeps_the_parts_this_job_wrote(tmp_path):
    """With --overwrite, rank 0 of the restarted attempt laid the store out again, deleting
    every part the first attempt had written (a job preempted every hour never finished)."""
    out = tmp_path / "ranks.h5"
    run, hold, pid = held_run(tmp_path, out, restarts=1, extra=["--overwrite"])
    first = parts_dir(out) / "part-00000.h5"
    with h5py.File(first, "r", locking=False) as f:
        assert f.attrs["complete"]  # filled before part 2 was taken
    before = first.stat()
    os.kill(pid, signal.SIGKILL)
    hold.unlink()
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr[-12000:]
    after = first.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    same_store(reference(tmp_path, NOISE, child=True, NOISE='{"n": 96}'), out)
