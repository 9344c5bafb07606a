"""Report wording a demanding reader checks: counts agree in number with their nouns."""

from __future__ import annotations

import numpy as np
import pytest
from test_report import make_row
from test_report_advice import sweep_rows

from featpipe.heads import few_shot
from featpipe.report import PlannedRun, RunPlan, write_report
from featpipe.report.advice import recommendation
from featpipe.report.summary import summarize


def test_report_notes_say_one_method_run_and_one_row(tmp_path):
    # Before: "1 of 1 method runs ... have no result yet" and "holds 1 row(s)".
    old = make_row("toy/logreg@pooled", acc=0.3)
    old["config_hash"] = "old"
    plan = RunPlan("unit", [PlannedRun("toy/mlp@pooled", 0, "h", "MLP")])
    md = write_report(tmp_path, [old], plan)["report.md"].read_text()
    assert "1 of 1 method run of the current configuration has no result yet: MLP" in md
    assert "also holds 1 row of earlier configurations" in md
    # Before: titled "featpipe report: (empty)", though the plan names its run.
    assert md.startswith("# featpipe report: unit\n")


def test_few_shot_says_one_training_row_not_row_s():
    rng = np.random.default_rng(0)
    y = np.arange(3)
    train = (rng.normal(size=(3, 8)) + 3 * y[:, None]).astype(np.float32), y
    test = (rng.normal(size=(6, 8)) + 3 * (np.arange(6) % 3)[:, None]).astype(np.float32)
    data = {"train": train, "test": (test, np.arange(6) % 3)}
    with pytest.warns(UserWarning, match=r"has exactly 1 training row, so every draw") as seen:
        few_shot("logreg", data, k=1, draws=3, device="cpu")
    assert "row(s)" not in str(seen[0].message)


def _layers(val_stage1: float) -> list[dict]:
    final = make_row("toy/logreg@pooled", acc=0.8, n=300)
    other = make_row("toy/logreg@stage1", acc=0.8, layer="stage1", n=300)
    final["val_accuracy"], other["val_accuracy"] = 0.7668, val_stage1
    return [other, final]  # the intermediate layer first in run order


def test_a_layer_ahead_on_validation_shows_the_gap_its_advice_relies_on():
    # Before: "ahead of the final one on validation (pooled: best validation 76.7 % ...)"
    # beside stage1's "validation 76.7 %": one decimal hid the gap the sentence rests on.
    text = " ".join(recommendation(summarize(_layers(0.7672)), n_boot=200))
    assert "(toy/logreg@stage1, validation 76.72 %" in text
    assert "ahead of the final one on validation (pooled: best validation 76.68 %" in text


def test_a_layer_tied_on_validation_is_not_said_to_be_ahead_of_the_final_one():
    # Before: a tie went to the first layer in run order, an intermediate one, "ahead".
    text = " ".join(recommendation(summarize(_layers(0.7668)), n_boot=200))
    assert "The best layer on validation is pooled" in text
    assert "no intermediate layer beat the final one" in text


def test_a_crossover_shows_the_validation_gap_it_rests_on():
    # Before: "at 500, toy/finetune:full#n500 70.0 % against toy/logreg@pooled#n500 70.0 %".
    rows = sweep_rows((0.5, 0.7, 0.75), (0.6, 0.7, 0.75))
    for row in rows:
        if row["kind"] == "finetune" and row["train_size"] > 100:
            row["val_accuracy"] += 0.0004
    text = " ".join(recommendation(summarize(rows), n_boot=100))
    assert "at 500, toy/finetune:full#n500 70.04 % against" in text
    assert "70.00 % (test" in text
