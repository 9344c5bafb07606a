"""Report wording a demanding reader checks: counts agree in number with their nouns."""

from __future__ import annotations

import numpy as np
import pytest
from test_report import make_row

from featpipe.heads import few_shot
from featpipe.report import PlannedRun, RunPlan, write_report


def test_report_notes_say_one_method_run_and_one_row(tmp_path):
    # Before: "1 of 1 method runs ... have no result yet" and "holds 1 row(s)".
    old = make_row("toy/logreg@pooled", acc=0.3)
    old["config_hash"] = "old"
    plan = RunPlan("unit", [PlannedRun("toy/mlp@pooled", 0, "h", "MLP")])
    md = write_report(tmp_path, [old], plan)["report.md"].read_text()
    assert "1 of 1 method run of the current configuration has no result yet: MLP" in md
    assert "also holds 1 row of earlier configurations" in md


def test_few_shot_says_one_training_row_not_row_s():
    rng = np.random.default_rng(0)
    y = np.arange(3)
    train = (rng.normal(size=(3, 8)) + 3 * y[:, None]).astype(np.float32), y
    test = (rng.normal(size=(6, 8)) + 3 * (np.arange(6) % 3)[:, None]).astype(np.float32)
    data = {"train": train, "test": (test, np.arange(6) % 3)}
    with pytest.warns(UserWarning, match=r"has exactly 1 training row, so every draw") as seen:
        few_shot("logreg", data, k=1, draws=3, device="cpu")
    assert "row(s)" not in str(seen[0].message)
