"""Ranks from torchrun's environment, per-rank devices and cores, and log-friendly progress."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from featpipe.cli import _format_warning
from featpipe.device import available_cores, resolve_device
from featpipe.distributed import LineProgress, Ranks, current_ranks, progress_bar
from featpipe.distributed.progress import progress_mode, track
from featpipe.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
TORCHRUN_ENV = {
    "RANK": "1",
    "WORLD_SIZE": "2",
    "LOCAL_RANK": "1",
    "LOCAL_WORLD_SIZE": "2",
    "MASTER_ADDR": "127.0.0.1",
    "MASTER_PORT": "29500",
    "TORCHELASTIC_RESTART_COUNT": "3",
}


@pytest.fixture
def rank1_of_2(monkeypatch):
    for name, value in TORCHRUN_ENV.items():
        monkeypatch.setenv(name, value)


def test_a_plain_process_is_rank_0_of_1():
    assert current_ranks() == Ranks()
    assert current_ranks().is_main and current_ranks().tag == ""


def test_ranks_come_from_torchruns_environment(rank1_of_2):
    assert current_ranks() == Ranks(1, 2, 1, 2, 3)
    assert current_ranks().tag == "rank 1/2" and not current_ranks().is_main


def test_a_broken_rank_variable_names_itself(rank1_of_2, monkeypatch):
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(ConfigError, match="RANK must be an integer; got 'one'"):
        current_ranks()
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ConfigError, match="RANK=2 and WORLD_SIZE=2"):
        current_ranks()


def test_cores_are_shared_among_the_local_ranks(rank1_of_2, monkeypatch):
    alone = available_cores()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert available_cores() >= alone
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1000")
    assert available_cores() == 1


def test_auto_is_the_cpu_without_cuda_even_under_torchrun(rank1_of_2):
    if torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cuda", 1 % torch.cuda.device_count())
    else:
        assert resolve_device("auto") == torch.device("cpu")


def test_cpu_stays_the_cpu_under_torchrun(rank1_of_2):
    assert resolve_device("cpu") == torch.device("cpu")  # not cuda:LOCAL_RANK


def test_warnings_name_their_rank(rank1_of_2):
    assert _format_warning("odd", UserWarning, "f.py", 1) == ("featpipe [rank 1/2]: warning: odd\n")


def test_a_log_gets_one_plain_line_per_interval(rank1_of_2):
    now = [0.0]
    out = io.StringIO()
    bar = LineProgress(
        1000, desc="extract s.h5", unit="img", interval=30, stream=out, clock=lambda: now[0]
    )
    for _ in range(100):  # 100 updates over 50 s: one line at 30 s, one at close
        now[0] += 0.5
        bar.update(5)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in out.getvalue()
    assert lines[0] == (
        "featpipe [rank 1/2] extract s.h5: 300 of 1,000 img (30.0%), 10.0 img/s, "
        "elapsed 30s, ETA 1m10s"
    )
    assert lines[1].startswith("featpipe [rank 1/2] extract s.h5: 500 of 1,000 img (50.0%)")


def test_the_progress_mode_follows_the_terminal_unless_forced(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert progress_mode(io.StringIO()) == "lines"
    assert progress_mode(Tty()) == "bar"
    monkeypatch.setenv("FEATPIPE_PROGRESS", "bar")
    assert progress_mode(io.StringIO()) == "bar"
    monkeypatch.setenv("FEATPIPE_PROGRESS", "dots")
    with pytest.raises(ConfigError, match="one of bar, lines; got 'dots'"):
        progress_mode()


def test_a_disabled_progress_prints_nothing(capsys):
    bar = progress_bar(10, desc="x", enabled=False)
    bar.update(10)
    bar.close()
    assert capsys.readouterr().err == ""


def test_track_counts_an_iterable_and_prints_plain_lines_in_a_log(capsys, monkeypatch):
    monkeypatch.setenv("FEATPIPE_PROGRESS", "lines")
    assert list(track(range(3), desc="C path", unit="C")) == [0, 1, 2]
    assert capsys.readouterr().err.startswith("featpipe C path: 3 of 3 C (100.0%)")


RESTARTED_GROUP = """
import os, signal, time
import torch, torch.distributed as dist
from featpipe.distributed.ranks import current_ranks, process_group

ranks = current_ranks()
if ranks.restart == 1 and ranks.rank == 1:
    time.sleep(3)  # rank 0 of the new attempt reads rank 1's address first
with process_group("cpu", timeout_s=60):
    total = torch.ones(1)
    dist.all_reduce(total)
    if ranks.restart == 0:
        dist.barrier()
        if ranks.rank == 1:
            os.kill(os.getpid(), signal.SIGKILL)  # the agent restarts both workers
        time.sleep(60)
    print(f"rank {ranks.rank} restart {ranks.restart} sum {total.item():.0f}", flush=True)
"""


def test_a_process_group_comes_back_after_an_elastic_restart(tmp_path):
    """torchrun's agent keeps its store across restarts: the group of the new attempt read the
    dead workers' addresses under the old keys (gloo "connection refused", or a hang)."""
    script = tmp_path / "restarted_group.py"
    script.write_text(RESTARTED_GROUP)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    torchrun += ["--nproc-per-node", "2", "--max-restarts", "1", "--monitor-interval", "0.5"]
    done = subprocess.run(
        [*torchrun, str(script)],
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # both ranks of the restarted attempt, whose lines may interleave
    lines = re.findall(r"rank (\d) restart (\d) sum (\d)", done.stdout)
    assert sorted(lines) == [("0", "1", "2"), ("1", "1", "2")]
