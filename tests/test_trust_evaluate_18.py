"""Evaluation trust checks, session 15: n_boot from 1 to 39 is refused (a 95 % percentile
interval needs a resample in each 2.5 % tail), and a run made with one is still reported."""

from __future__ import annotations

import numpy as np
import pytest
from test_report import make_row

from featpipe.errors import ConfigError
from featpipe.evaluate.metrics import MIN_BOOT, check_n_boot, compute_metrics
from featpipe.pipeline.config import config_from_dict
from featpipe.report import write_report
from featpipe.report.runplan import PlannedRun, RunPlan


@pytest.mark.parametrize("n_boot", [1, 10, 39])
def test_too_few_resamples_are_refused_in_one_line_naming_the_fix(n_boot):
    # Before: accepted; n_boot 1 gave an interval with lo = hi, 10 or 20 one whose ends
    # were the most extreme resamples.
    y = np.arange(30) % 3
    with pytest.raises(ConfigError) as raised:
        compute_metrics(y, np.eye(3)[y], n_boot=n_boot)
    line = str(raised.value)
    assert "\n" not in line
    assert f"n_boot is {n_boot}" in line and "n_boot 0 (no intervals) or from 40" in line


def test_a_pipeline_with_too_few_resamples_is_refused_at_its_config(tmp_path):
    with pytest.raises(ConfigError, match="n_boot is 20; a 95 % interval needs at least 40"):
        config_from_dict({"name": "x", "out": str(tmp_path / "run"), "n_boot": 20})


@pytest.mark.parametrize("n_boot", [0, MIN_BOOT, 1000])
def test_no_interval_and_enough_resamples_are_accepted(n_boot):
    check_n_boot(n_boot)


def test_a_run_made_with_too_few_resamples_is_still_reported_with_a_note(tmp_path):
    # Its plan.json was written before the floor: the report must not refuse it (it takes
    # no n_boot to fix), and it says what it did.
    rows = [make_row("toy/logreg@pooled", acc=0.8), make_row("toy/knn@pooled", acc=0.6)]
    plan = RunPlan("old", [PlannedRun(r["method"], 0, "h") for r in rows], n_boot=10)
    md = write_report(tmp_path, rows, plan)["report.md"].read_text()
    assert "this run's n_boot is 10, fewer resamples than a 95 % interval needs (40)" in md
    assert "40 resamples" in md
