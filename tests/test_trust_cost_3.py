"""The cost of a DDP fine-tune resumed on another number of processes: each piece's seconds
count once per process of that piece (process-seconds), in the checkpoint, the row and the
report."""

from __future__ import annotations

import json
import time

import pytest
import torch
from ddp_finetune_child import PARAMS, source
from test_distributed_finetune import CHILD, EPOCH_LOADS, VAL_LOADS, torchrun
from test_finetune import StopAfter

from featpipe.cli import main as cli_main
from featpipe.evaluate.cost import Cost, Usage
from featpipe.finetune import FineTuner
from featpipe.finetune import tuner as tuner_module
from featpipe.interrupt import Interrupted
from featpipe.pipeline.stages.finetune import tuner_row
from featpipe.report.content import _processes_note
from featpipe.report.results import ResultRow, ResultsFormatError
from featpipe.report.summary import row_cost, summarize


def test_a_ddp_fine_tune_resumed_on_one_process_counts_each_pieces_processes(tmp_path):
    run = tmp_path / "run"
    # 2 ranks, rank 1 killed in epoch 2 after epoch 1's checkpoint ...
    killed = torchrun(CHILD, run, tmp_path / "out.pt", VAL_LOADS + EPOCH_LOADS + VAL_LOADS + 10)
    assert killed.returncode != 0
    piece = torch.load(run / "last.pt", weights_only=True)
    assert piece["epoch"] == 1 and {h["world_size"] for h in piece["history"]} == {2}
    before = piece["fit_seconds"]
    # ... finished here, on one process.
    tuner = FineTuner("toy", run_dir=run, **PARAMS).fit(source())
    assert tuner.start_epoch_ == 1 and [h["world_size"] for h in tuner.history_] == [2, 2, 1, 1]
    expected = 2 * before + (tuner.fit_seconds_ - before)
    assert tuner.fit_process_seconds_ == pytest.approx(expected)

    proba = tuner.predict_proba("test")
    written = tuner_row(tuner, proba, Usage(), 0.5, run="r", limits={}).to_json()
    row = ResultRow.from_json(json.loads(json.dumps(written))).to_json()  # read back
    assert row["world_size"] == 1 and row["cost"]["fit_seconds"] == tuner.fit_seconds_
    # Before: the final piece's 1 process times every piece's seconds.
    assert row_cost(row, "fit_seconds") == pytest.approx(expected)
    assert row_cost(row, "predict_seconds") == 0.5
    assert row_cost(row, "total_seconds") == pytest.approx(expected + 0.5)
    # The report's note lists it: it ran on 2 processes at once.
    (note,) = _processes_note(summarize([row]))
    assert f"{row['label']} (2)" in note
    assert piece["fit_process_seconds"] == pytest.approx(2 * before)


def test_a_resumed_run_adds_its_own_seconds_once(tmp_path):
    """A 1-process piece after a checkpoint holding a 4-rank run's process-seconds."""
    params = {**PARAMS, "epochs": 2, "run_dir": tmp_path}
    with pytest.raises(Interrupted):
        FineTuner("toy", callbacks=[StopAfter(1)], **params).fit(source())
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    before = saved["fit_seconds"]
    saved["fit_process_seconds"] = 4 * before
    torch.save(saved, tmp_path / "last.pt")
    started = time.perf_counter()
    tuner = FineTuner("toy", **params).fit(source())
    added = tuner.fit_seconds_ - before
    assert 0 < added <= time.perf_counter() - started
    assert tuner.fit_process_seconds_ == pytest.approx(4 * before + added)
    assert tuner.training_state()["fit_process_seconds"] == tuner.fit_process_seconds_


def test_a_finished_run_run_again_adds_no_seconds(tmp_path):
    """Run again, a finished run trains nothing: it reports the seconds last.pt holds."""
    params = {**PARAMS, "epochs": 1, "run_dir": tmp_path}
    FineTuner("toy", **params).fit(source())
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    saved["fit_process_seconds"] = 4 * saved["fit_seconds"]
    torch.save(saved, tmp_path / "last.pt")
    tuner = FineTuner("toy", **params).fit(source())
    assert tuner.fit_seconds_ == saved["fit_seconds"]
    assert tuner.fit_process_seconds_ == saved["fit_process_seconds"]


@pytest.mark.parametrize(
    ("saved", "expected"),
    [
        # Both recorded: as saved.
        ({"fit_seconds": 10.0, "fit_process_seconds": 25.0}, (10.0, 25.0)),
        # No process-seconds (written before they were): the wall seconds at the world size
        # of the checkpoint's last epoch.
        ({"fit_seconds": 10.0}, (10.0, 20.0)),
        # Neither: its epochs' seconds, at that world size too.
        ({}, (5.0, 10.0)),
    ],
)
def test_older_checkpoints_fall_back(saved, expected):
    history = [
        {"epoch": 0, "seconds": None},
        {"epoch": 1, "seconds": 3.0, "world_size": 2},
        {"epoch": 2, "seconds": 2.0, "world_size": 2},
    ]
    assert tuner_module._resumed_seconds({**saved, "history": history}) == expected


def test_checkpoints_from_before_ddp_fall_back_to_one_process():
    history = [{"epoch": 0, "seconds": None}, {"epoch": 1, "seconds": 3.0}]
    assert tuner_module._resumed_seconds({"fit_seconds": 4.0, "history": history}) == (4.0, 4.0)


def _row(world_size: int, **cost) -> dict:
    usage = Usage(seconds=1.0, peak_host_bytes=1)
    record = Cost.of(usage, fit_seconds=10.0, predict_seconds=1.0, n_test=4, trainable_params=3)
    return {"world_size": world_size, "cost": {**record.to_json(), **cost}}


def test_row_cost_reads_process_seconds_when_the_row_has_them():
    # A row from before fit_process_seconds: every second at the final world size.
    old = _row(2)
    assert "fit_process_seconds" not in old["cost"]
    assert row_cost(old, "fit_seconds") == 20.0
    assert row_cost(old, "total_seconds") == 22.0
    # 4 ranks, then resumed on 2: fewer process-seconds than 4 x 10.
    new = _row(2, fit_process_seconds=13.0)
    assert row_cost(new, "fit_seconds") == 13.0
    assert row_cost(new, "predict_seconds") == 2.0
    assert row_cost(new, "total_seconds") == 15.0
    # On one process, too: 2 ranks, then resumed on 1.
    assert row_cost(_row(1, fit_process_seconds=14.0), "total_seconds") == 15.0
    assert row_cost(_row(1), "total_seconds") == 11.0


def test_fit_process_seconds_is_validated_and_optional():
    record = Cost.of(Usage(), fit_seconds=1.0, predict_seconds=0.0, n_test=0, trainable_params=1)
    assert "fit_process_seconds" not in record.to_json()
    with_it = Cost.of(
        Usage(),
        fit_seconds=1.0,
        fit_process_seconds=2.0,
        predict_seconds=0.0,
        n_test=0,
        trainable_params=1,
    )
    assert with_it.to_json()["fit_process_seconds"] == 2.0
    assert with_it.total_seconds == 1.0  # wall seconds, as before
    from featpipe.report.results import _check_fields

    _check_fields(record.to_json(), Cost, "row 1 cost")  # old rows read
    with pytest.raises(ResultsFormatError, match="fit_process_seconds"):
        _check_fields({**record.to_json(), "fit_process_seconds": "2"}, Cost, "row 1 cost")


@pytest.mark.parametrize("grid", [None, "lr=0.05"])
def test_cli_finetune_records_process_seconds(split_image_folder, tmp_path, grid):
    run_dir = tmp_path / "run"
    args = "finetune --backbone toy --epochs 1 --batch-size 4 --no-progress"
    args += f" --grid {grid}" if grid else ""
    code = cli_main([*args.split(), "--data", str(split_image_folder), "--run-dir", str(run_dir)])
    assert code == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    (row,) = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    # One process: as many process-seconds as wall seconds (a grid's: every candidate's).
    assert metrics["fit_process_seconds"] == pytest.approx(metrics["fit_seconds"])
    assert row["cost"]["fit_process_seconds"] == pytest.approx(row["cost"]["fit_seconds"])
    assert row_cost(row, "fit_seconds") == pytest.approx(row["cost"]["fit_seconds"])
