"""A fine-tune whose DataLoader worker the system kills: one line saying what was kept and how to
go on, as extraction says (tests/test_trust_extract_10.py, _15.py)."""

from __future__ import annotations

import os
import signal

import pytest
from finetune_child import synthetic_source
from test_trust_messages_2 import command

from featpipe.cli import as_flags
from featpipe.data import ArraySource
from featpipe.errors import WorkerDiedError
from featpipe.finetune import FineTuner


def test_a_killed_loader_worker_is_one_line_naming_what_was_kept(tmp_path, monkeypatch):
    """It was torch's 'RuntimeError: DataLoader worker (pid N) is killed by signal: Killed'
    traceback, with nothing said of the checkpoints kept."""
    load, test_process = ArraySource.load, os.getpid()

    def killed_in_a_worker(self, index):
        if os.getpid() != test_process:
            os.kill(os.getpid(), signal.SIGKILL)
        return load(self, index)

    monkeypatch.setattr(ArraySource, "load", killed_in_a_worker)
    tuner = FineTuner(
        backbone="toy", epochs=1, batch_size=8, workers=2, verbose=0, seed=0, run_dir=tmp_path
    )
    with pytest.raises(WorkerDiedError) as info:
        tuner.fit(synthetic_source(n_train=24, n_val=12, n_test=6))
    text = str(info.value)
    assert text.startswith("DataLoader worker") and "A data loader worker died" in text
    assert "run the same command to start over" in text and "\n" not in text
    # A Python caller reads its parameters, the command line its flags (as_flags); both once
    # read "fewer --workers or a smaller --batch-size".
    assert "fewer workers (CLI: --workers) or a smaller batch_size (CLI: --batch-size)" in text
    cli = as_flags(text, command("finetune"))
    assert "with fewer --workers or a smaller --batch-size if memory ran out." in cli


def test_a_runtime_error_that_is_not_a_worker_dying_is_left_as_it_is(monkeypatch):
    def broken(self, index):
        raise RuntimeError("something else")

    monkeypatch.setattr(ArraySource, "load", broken)
    tuner = FineTuner(backbone="toy", epochs=1, batch_size=8, workers=0, verbose=0, seed=0)
    with pytest.raises(RuntimeError, match="something else") as info:
        tuner.fit(synthetic_source(n_train=24, n_val=12, n_test=6))
    assert not isinstance(info.value, WorkerDiedError)
