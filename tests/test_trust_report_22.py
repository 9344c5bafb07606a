"""Report trust checks, session 17: a report reuses the intervals rows made at its n_boot, and
says what it does with a run's n_boot."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import record_calls
from test_report import make_row
from test_trust_report_21 import _recomputed

import featpipe.report.summary
from featpipe.evaluate.metrics import PREDICTION_METRICS, compute_metrics
from featpipe.report import write_report
from featpipe.report.content import build_document
from featpipe.report.markdown import render_markdown
from featpipe.report.runplan import PlannedRun, RunPlan
from featpipe.report.summary import summarize

ROWS_N_BOOT = 100  # make_row's


def _rows() -> list[dict]:
    return [make_row("toy/mlp@pooled", acc=0.8, seed=s, n=200) for s in range(3)]


def test_rows_record_the_n_boot_of_their_intervals():
    y = np.arange(60) % 3
    for n_boot in (0, 40, np.int64(200)):
        metrics = compute_metrics(y, np.eye(3)[y], n_boot=n_boot)
        assert metrics["n_boot"] == n_boot and type(metrics["n_boot"]) is int
        json.dumps(metrics)  # a row's field


def test_a_report_at_the_rows_n_boot_reuses_their_intervals_without_resampling(monkeypatch):
    # Before: every row was bootstrapped again for every report (3.9 s a row on 50,000 test
    # images of 1,000 classes), repeating what compute_metrics had just stored.
    rows = _rows()
    calls = record_calls(monkeypatch, featpipe.report.summary, "bootstrap_intervals")
    md = render_markdown(build_document(rows, n_boot=ROWS_N_BOOT))
    assert calls == []
    (s,) = summarize(rows, ROWS_N_BOOT)
    for metric in PREDICTION_METRICS:
        assert s.score_ci(metric) == _recomputed(rows, metric, ROWS_N_BOOT)  # bit for bit
    assert calls == [] and "(95 % CI)" in md


def test_a_report_at_another_n_boot_draws_the_rows_again(monkeypatch):
    rows = _rows()
    calls = record_calls(monkeypatch, featpipe.report.summary, "bootstrap_intervals")
    (s,) = summarize(rows, 40)
    for metric in PREDICTION_METRICS:
        assert s.score_ci(metric) == _recomputed(rows, metric, 40)
    assert len(calls) == len(rows)


def test_rows_that_do_not_record_their_n_boot_are_drawn_again(monkeypatch):
    # Made before metrics.n_boot, a row may have been reused by a run at another n_boot: its
    # intervals' n_boot is not known, so the report draws them at its own.
    rows = _rows()
    for r in rows:
        del r["metrics"]["n_boot"]
    calls = record_calls(monkeypatch, featpipe.report.summary, "bootstrap_intervals")
    (s,) = summarize(rows, ROWS_N_BOOT)
    stored = np.mean([r["metrics"]["ci"]["macro_f1"] for r in rows], axis=0)
    assert s.score_ci("macro_f1") == tuple(float(v) for v in stored)
    assert len(calls) == len(rows)


def test_the_note_on_too_few_resamples_says_the_rows_are_reused(tmp_path):
    # Before: it said the rows' intervals came from the run's n_boot and that a re-run
    # computes its results again; the report draws them at 40 and a re-run reuses every row.
    rows = [make_row("toy/logreg@pooled", acc=0.8), make_row("toy/knn@pooled", acc=0.6)]
    plan = RunPlan("old", [PlannedRun(r["method"], 0, "h") for r in rows], n_boot=20)
    md = write_report(tmp_path, rows, plan)["report.md"].read_text()
    (note,) = [line for line in md.splitlines() if "this run's n_boot is 20" in line]
    assert "this report computes its intervals and comparisons with 40" in note
    assert "its rows are reused, nothing is fitted again" in note
    assert "computed again" not in note and "came from 20" not in note
    (s,) = [s for s in summarize(rows, 40) if s.method == "toy/logreg@pooled"]
    drawn, stored = s.score_ci("balanced_accuracy"), s.rows[0]["metrics"]["ci"]
    cell = "{:.1f}–{:.1f}".format
    assert cell(*np.multiply(100, drawn)) in md  # drawn at 40, not the rows' 100
    assert cell(*np.multiply(100, stored["balanced_accuracy"])) not in md


@pytest.mark.parametrize("n_seeds", [1, 5])
def test_the_wilson_wording_claims_the_variance_not_the_ends(n_seeds):
    # Before: "at least as wide as the mean needs", false at the ends for seeds that agree
    # (50 % of 200 images: Wilson 43.1-56.9, a percentile bootstrap 43.0-57.0). What holds:
    # it assumes p(1 - p) / n, the most the seeds' mean can vary over the images.
    rows = [make_row("toy/mlp@pooled", acc=0.5, seed=s, n=200) for s in range(n_seeds)]
    hits = np.array([np.equal(r["test"]["y_true"], r["test"]["y_pred"]) for r in rows])
    per_image, p = hits.mean(axis=0), hits.mean()
    assert per_image.var() <= p * (1 - p) + 1e-15
    assert (per_image.var() == pytest.approx(p * (1 - p))) == (n_seeds == 1)
    md = render_markdown(build_document(rows, n_boot=40))
    assert "it assumes the most variance the seeds' mean can have over these images" in md
    assert "at least as wide" not in md
