"""A fine-tuning run folder's files are written whole and durably (checkpoints synced before
and after their rename, config.json whole), and its best.pt is resumed only as the best of
the run its last.pt names. A grid's cost counts each candidate at the processes that trained
it."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
from finetune_child import synthetic_source
from test_trust_store_22 import assert_synced_in_order, record_syncs

from featpipe.cli import main
from featpipe.errors import ConfigError
from featpipe.evaluate.cost import Usage
from featpipe.finetune import FineTuner, checkpoint
from featpipe.finetune.callbacks import WriteJson
from featpipe.finetune.search import fit_grid
from featpipe.pipeline.stages.finetune import tuner_row
from featpipe.report.results import ResultRow
from featpipe.report.summary import row_cost

# The toy learns little in an epoch: what is checked here is the files.
pytestmark = pytest.mark.filterwarnings("ignore:The fine-tune chose epoch")
PARAMS = dict(epochs=1, batch_size=8, lr=0.05, patience=None, verbose=0)


def test_a_checkpoint_is_synced_before_its_rename_and_its_folder_after(tmp_path, monkeypatch):
    events = record_syncs(monkeypatch)
    path = tmp_path / checkpoint.LAST
    checkpoint.save(path, {"epoch": 3})
    assert checkpoint.load(path) == {"epoch": 3}
    assert_synced_in_order(events, path)


def test_an_epoch_names_its_best_only_once_that_best_is_on_disk(tmp_path, monkeypatch):
    events = record_syncs(monkeypatch)
    checkpoint.save_epoch(tmp_path, {"epoch": 1, "best_epoch": 1}, {"epoch": 1, "model": {}})
    last = tmp_path / checkpoint.LAST
    assert_synced_in_order(events, last)
    # The pending best's bytes and name reach the disk before last.pt names its epoch.
    best = (tmp_path / checkpoint.BEST).stat().st_ino
    moved = next(i for i, e in enumerate(events) if e[0] == "replace" and e[2] == last)
    placed = events.index(("replace", best, tmp_path / checkpoint.PENDING))
    assert ("file", best) in events[:placed], events
    assert ("folder", tmp_path.stat().st_ino) in events[placed + 1 : moved], events


def test_a_checkpoint_leaves_another_writers_temporary_file_alone(tmp_path):
    # A fixed ".tmp" name was shared by every writer of that checkpoint.
    other = tmp_path / (checkpoint.LAST + ".tmp")
    other.write_bytes(b"another writer's half")
    checkpoint.save(tmp_path / checkpoint.LAST, {"epoch": 1})
    assert other.read_bytes() == b"another writer's half"
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint.LAST, other.name]


def _fails_midway(monkeypatch) -> None:
    """Every Path.write_text and Path.write_bytes writes half its data, then the disk fills."""

    def half(self, data, *args, **kwargs):
        with open(self, "wb") as f:
            f.write((data.encode() if isinstance(data, str) else data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half)
    monkeypatch.setattr(Path, "write_bytes", half)


def test_a_run_config_that_fails_midway_leaves_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    WriteJson(path, {"lr": 0.1}).on_fit_start(None)
    _fails_midway(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        WriteJson(path, {"lr": 0.2, "note": "x" * 100}).on_fit_start(None)
    assert json.loads(path.read_text()) == {"lr": 0.1}
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


@pytest.fixture(scope="module")
def source():
    return synthetic_source()


@pytest.mark.parametrize(
    "other", [{"run": "another run"}, {"epoch": 7}], ids=["another-run", "another-epoch"]
)
def test_a_best_pt_other_than_the_one_last_pt_names_is_refused(tmp_path, source, other):
    FineTuner("toy", seed=0, run_dir=tmp_path, **PARAMS).fit(source)
    best = tmp_path / checkpoint.BEST
    checkpoint.save(best, {**checkpoint.load(best), **other})  # a best.pt copied in by hand
    with pytest.raises(ConfigError) as info:
        FineTuner("toy", seed=0, run_dir=tmp_path, **PARAMS).fit(source)
    message = str(info.value)
    assert "\n" not in message
    assert "best.pt is not the best model last.pt names (it holds epoch" in message
    assert "resume=False" in message


def test_the_cli_refuses_a_copied_best_pt_in_one_line(split_image_folder, tmp_path, capsys):
    folder = tmp_path / "run"
    args = "finetune --backbone toy --mode head --epochs 1 --batch-size 4 --no-progress"
    args += f" --data {split_image_folder} --run-dir {folder}"
    assert main(args.split()) == 0
    best = folder / checkpoint.BEST
    checkpoint.save(best, {**checkpoint.load(best), "run": "another run"})
    capsys.readouterr()
    assert main(args.split()) == 2
    err = capsys.readouterr().err.strip()
    assert "best.pt is not the best model last.pt names" in err and "\n" not in err


def test_a_grid_counts_each_candidate_at_the_processes_that_trained_it(tmp_path, source):
    """A finished grid run again on another number of processes (here its checkpoints say 2
    trained, 1 runs now) trains nothing: its row's fit cost is the candidates' own."""
    tuner = FineTuner("toy", seed=0, run_dir=tmp_path, **PARAMS)
    first = fit_grid(tuner, source, {"lr": [0.01, 0.05]})
    for last in tmp_path.glob(f"*/{checkpoint.LAST}"):
        saved = checkpoint.load(last)
        checkpoint.save(last, {**saved, "fit_process_seconds": 2 * saved["fit_seconds"]})
    again = fit_grid(tuner, source, {"lr": [0.01, 0.05]})
    assert again.fit_seconds == first.fit_seconds
    proba = again.best.predict_proba("test")
    row = tuner_row(again.best, proba, Usage(), 0.5, run="r", limits={}, search=again)
    row = ResultRow.from_json(json.loads(json.dumps(row.to_json()))).to_json()  # read back
    assert row["world_size"] == 1  # the processes that predicted now
    # Before: the fit seconds counted at the world size of now (1), not the 2 that trained.
    assert row_cost(row, "fit_seconds") == pytest.approx(2 * first.fit_seconds)
    assert row_cost(row, "predict_seconds") == 0.5
