"""Trust review of the command line surface and of progress in multi-process jobs."""

from __future__ import annotations

import io

import pytest
from test_distributed_env import TORCHRUN_ENV

from featpipe.cli import main
from featpipe.distributed import LineProgress, progress_bar
from featpipe.distributed.progress import progress_mode


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def rank1_of_2(monkeypatch):
    for name, value in TORCHRUN_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("FEATPIPE_PROGRESS", raising=False)


def test_on_a_terminal_only_rank_0_of_a_torchrun_job_draws_a_bar(rank1_of_2, monkeypatch):
    """torchrun's ranks share the terminal they were started from: their carriage-return bars,
    untagged, took turns on its one line (rank 0 at '9 parts filled: 328img', then rank 1 at
    '30% 64/210', left on screen as if rank 1 had stopped there)."""
    monkeypatch.setattr("sys.stderr", Tty())
    assert progress_mode(Tty()) == "lines"
    assert isinstance(progress_bar(10, desc="extract s.h5"), LineProgress)
    monkeypatch.setenv("RANK", "0")  # rank 0 keeps its bar (a DDP fine-tune shows only it)
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert progress_mode(Tty()) == "bar"
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("FEATPIPE_PROGRESS", "bar")  # still forced at will
    assert progress_mode(Tty()) == "bar"


def test_a_single_process_keeps_its_bar_on_a_terminal(monkeypatch):
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("FEATPIPE_PROGRESS", raising=False)
    assert progress_mode(Tty()) == "bar"


def test_a_count_past_its_guessed_total_is_not_above_100_percent():
    """A rank's share of the parts is a guess (rows / ranks); a rank that claimed more printed
    'featpipe [rank 0/2] extract t2.h5: 264 of 232 img (113.8%)'."""
    out = io.StringIO()
    bar = LineProgress(232, desc="extract t2.h5", unit="img", interval=1e9, stream=out)
    bar.update(264)
    bar.close()
    line = out.getvalue().strip()
    assert line.startswith("featpipe extract t2.h5: 264 img, ")
    assert "%" not in line and "of 232" not in line and "ETA" not in line


def test_an_error_in_a_torchrun_job_names_its_rank(rank1_of_2, tmp_path, capsys):
    """Each rank prints its own error; they read 'featpipe extract: error: ...' alike, so a
    log of 8 ranks did not say which failed (warnings and progress lines name their rank)."""
    assert main(["info", str(tmp_path / "none.h5")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("featpipe [rank 1/2] info: error: No feature store at ")
    assert len(err.splitlines()) == 1


def test_broken_torchrun_variables_are_one_line_without_a_rank(monkeypatch, tmp_path, capsys):
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["extract", "digits", "--out", str(tmp_path / "s.h5")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("featpipe extract: error: WORLD_SIZE=2 says this process is one of")
    assert len(err.splitlines()) == 1 and not list(tmp_path.iterdir())
