"""Fine-tuning under interruptions and re-runs: a run stopped by the caller's callback, a grid
interrupted without --run-dir, two fits in one run folder, a run folder that is a file, a
history left behind by a crash, a grid listing a value twice."""

from __future__ import annotations

import json

import pytest
import torch
from finetune_child import synthetic_source
from test_finetune import tuner

from featpipe.cli import main as cli_main
from featpipe.errors import ConfigError, FeaturePipeError, StoreInUseError, StoreWriteError
from featpipe.finetune import Callback, FineTuner, checkpoint
from featpipe.finetune import tuner as tuner_module
from featpipe.finetune.callbacks import HistoryLogger


class StopAt(Callback):
    """Stops training (as a time budget would) at the end of epoch ``epoch``."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_end(self, tuner, logs):
        if logs["epoch"] >= self.epoch:
            tuner.stop_training_ = True


def test_a_run_stopped_by_a_callback_is_finished_when_run_again(tmp_path):
    # The caller's callbacks run after the checkpoint: its last.pt said "not stopped", and
    # running the same finished run again trained another epoch.
    source = synthetic_source()
    first = tuner(epochs=3, run_dir=tmp_path, callbacks=[StopAt(1)]).fit(source)
    assert [h["epoch"] for h in first.history_] == [0, 1]
    assert checkpoint.load(tmp_path / checkpoint.LAST)["stopped"] is True
    again = tuner(epochs=3, run_dir=tmp_path, callbacks=[StopAt(1)]).fit(source)
    assert again.history_ == first.history_ and again.start_epoch_ == 1


def test_a_grid_interrupted_without_a_run_dir_says_which_candidate_and_how_to_resume(
    split_image_folder, tmp_path, monkeypatch, capsys
):
    # The CLI asked the grid's template (never fitted) what it kept: AttributeError traceback.
    train_epoch = FineTuner._train_epoch

    def interrupted(self, replica, data, epoch):
        if self.lr == 0.05:
            raise KeyboardInterrupt
        return train_epoch(self, replica, data, epoch)

    monkeypatch.setattr(FineTuner, "_train_epoch", interrupted)
    monkeypatch.chdir(tmp_path)
    args = "finetune --backbone toy --epochs 1 --batch-size 4 --no-progress --grid lr=0.01,0.05"
    code = cli_main([*args.split(), "--data", str(split_image_folder)])
    err = capsys.readouterr().err.strip().splitlines()
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert code == 130, err
    assert err[-1] == (
        "featpipe finetune: grid candidate 2 of 2 (lr=0.05): interrupted: epoch 0 of 1 done; "
        f"run the same command with --run-dir {run_dir.relative_to(tmp_path)} to resume"
    )
    monkeypatch.setattr(FineTuner, "_train_epoch", train_epoch)
    data = ["--data", str(split_image_folder)]
    assert cli_main([*args.split(), *data, "--run-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert out.count("resumed from epoch 1") == 1  # the first candidate, not trained again
    assert "grid: 2 settings, chosen on val" in out


class SecondFit(Callback):
    """At the end of epoch 1, fits ``second`` (the same run folder) and keeps what it raised."""

    def __init__(self, second: FineTuner):
        self.second, self.raised = second, None

    def on_epoch_end(self, tuner, logs):
        if logs["epoch"] == 1:
            try:
                self.second.fit(synthetic_source())
            except FeaturePipeError as exc:
                self.raised = exc


def test_a_second_fit_in_a_run_folder_in_use_is_refused(tmp_path):
    # Two fits in one folder overwrote each other's last.pt and best.pt; with both writing
    # best.pt.next.tmp at once, one failed with FileNotFoundError.
    source = synthetic_source()
    alone = tuner(epochs=1).fit(source)
    second = SecondFit(tuner(epochs=1, run_dir=tmp_path))
    first = tuner(epochs=1, run_dir=tmp_path, callbacks=[second]).fit(source)
    assert isinstance(second.raised, StoreInUseError), second.raised
    assert str(second.raised).startswith(f"The run folder {tmp_path} is in use by pid ")
    assert "another fine-tune is training in it" in str(second.raised)
    assert first.history_ == json_rows(tmp_path / "history.jsonl")
    assert checkpoint.load(tmp_path / checkpoint.LAST)["history"] == first.history_
    a, b = alone.model_.state_dict(), first.model_.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # Once the first has finished, the same fit resumes its finished run.
    again = tuner(epochs=1, run_dir=tmp_path).fit(source)
    assert again.start_epoch_ == 1 and again.history_ == first.history_


def json_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_run_dir_that_is_a_file_is_refused_in_one_line(split_image_folder, tmp_path, capsys):
    # Both failed with a FileExistsError traceback (the CLI making the folder, the tuner its
    # first checkpoint).
    taken = tmp_path / "taken"
    taken.write_text("notes")
    with pytest.raises(ConfigError, match=rf"Cannot make the run folder {taken} \(File exists\)"):
        tuner(epochs=1, run_dir=taken).fit(synthetic_source())
    args = "finetune --backbone toy --epochs 1 --batch-size 4 --no-progress"
    code = cli_main([*args.split(), "--data", str(split_image_folder), "--run-dir", str(taken)])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and line == (
        f"featpipe finetune: error: Cannot make the run folder {taken} (File exists): give "
        "--run-dir a folder you can write to."
    )
    assert taken.read_text() == "notes"


def test_a_finished_run_resumed_after_a_crash_writes_its_whole_history(tmp_path, monkeypatch):
    # A full disk after last.pt, before history.jsonl: the finished run resumed trains no
    # epoch, so history.jsonl kept missing the last one.
    write = HistoryLogger.on_epoch_end

    def full_disk(self, tuner, logs):
        if logs["epoch"] == 1:
            raise OSError(28, "No space left on device")
        write(self, tuner, logs)

    monkeypatch.setattr(HistoryLogger, "on_epoch_end", full_disk)
    with pytest.raises(OSError, match="No space left"):
        tuner(epochs=1, run_dir=tmp_path).fit(synthetic_source())
    monkeypatch.setattr(HistoryLogger, "on_epoch_end", write)
    ft = tuner(epochs=1, run_dir=tmp_path).fit(synthetic_source())
    assert ft.start_epoch_ == 1 and json_rows(tmp_path / "history.jsonl") == ft.history_


class NoLocks:
    """A folder where no lock file can be made (read-only, or no flock on its filesystem)."""

    def __init__(self, store, timeout=None):
        self.store = store

    def __enter__(self):
        raise StoreWriteError(f"Cannot lock {self.store} for writing")

    def __exit__(self, *exc):
        pass


def test_a_run_folder_without_locks_still_trains_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setattr(tuner_module, "StoreLock", NoLocks)
    ft = tuner(epochs=1, run_dir=tmp_path).fit(synthetic_source())
    again = tuner(epochs=1, run_dir=tmp_path).fit(synthetic_source())
    assert again.start_epoch_ == 1 and again.history_ == ft.history_


def test_a_grid_value_listed_twice_is_refused_before_training(
    split_image_folder, tmp_path, monkeypatch, capsys
):
    # lr=0.01,1e-2 trained once: the second candidate resumed the first's folder, and the
    # grid's cost (metrics.json, the result row) counted its seconds twice.
    monkeypatch.chdir(tmp_path)
    args = "finetune --backbone toy --epochs 1 --batch-size 4 --grid lr=0.01,0.05,1e-2"
    assert cli_main([*args.split(), "--data", str(split_image_folder)]) == 2
    assert capsys.readouterr().err.strip() == (
        "featpipe finetune: error: --grid.lr lists 0.01 more than once (in [0.01, 0.05, 0.01]); "
        "list each value once."
    )
