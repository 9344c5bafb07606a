"""Report trust checks, session 17: a run's intervals follow its n_boot without refitting."""

from __future__ import annotations

import json

import numpy as np
import pytest
import toy_backbone  # noqa: F401  (registers the 'toy' backbone)
from conftest import record_calls

import featpipe.heads
from featpipe.evaluate.metrics import bootstrap_intervals
from featpipe.finetune import FineTuner
from featpipe.pipeline import config_from_dict, run_pipeline
from featpipe.report.content import build_document
from featpipe.report.markdown import render_markdown
from featpipe.report.summary import summarize

SCORES = ("balanced_accuracy", "macro_f1")


def _config(tmp_path, n_boot: int):
    """knn (deterministic), a linear SVM (its own predictions) and a head fine-tune, two seeds."""
    return config_from_dict({
        "name": "nboot", "out": str(tmp_path / "run"), "device": "cpu", "n_boot": n_boot,
        "seeds": [0, 1],
        "source": {"data": "digits", "limits": {"train": 60, "val": 30, "test": 30}},
        "features": {"backbones": ["toy"], "image_size": 16, "workers": 0,
                     "cache_dir": str(tmp_path / "cache")},
        "probes": {"heads": ["knn", "linear_svm"]},
        "finetune": {"modes": ["head"], "epochs": 1, "batch_size": 16, "workers": 0},
    })  # fmt: skip


def _run(tmp_path, n_boot: int) -> tuple[list[dict], str]:
    out = run_pipeline(_config(tmp_path, n_boot), progress=False, log=lambda _: None)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return rows, (out / "report.md").read_text()


def _cell(ci) -> str:
    return f"({100 * ci[0]:.1f}–{100 * ci[1]:.1f})"


def _recomputed(rows: list[dict], metric: str, n_boot: int) -> tuple[float, float]:
    """The mean over seeds of each row's interval from its predictions at ``n_boot``."""
    cis = [
        bootstrap_intervals(
            np.asarray(r["test"]["y_true"]),
            np.asarray(r["test"]["y_pred"]),
            len(r["classes"]),
            n_boot,
            r["seed"],
        )[metric]
        for r in rows
    ]
    lo, hi = np.mean(cis, axis=0)
    return float(lo), float(hi)


def test_a_rerun_at_another_n_boot_refits_nothing_and_reports_intervals_at_it(
    tmp_path, monkeypatch
):
    # Before: n_boot was in every probe's and fine-tune's config hash, so the second run
    # re-selected every head and fine-tuned again, only to change the intervals.
    rows, _ = _run(tmp_path, 40)
    fits = record_calls(monkeypatch, featpipe.heads, "select_and_fit")
    tunes = record_calls(monkeypatch, FineTuner, "fit")
    again, report = _run(tmp_path, 400)
    assert fits == [] and tunes == [] and again == rows  # no row refitted, none appended
    by_method: dict[str, list[dict]] = {}
    for row in rows:
        by_method.setdefault(row["method"], []).append(row)
    changed = 0
    for method_rows in by_method.values():
        for metric in SCORES:
            at_400, at_40 = (_recomputed(method_rows, metric, n) for n in (400, 40))
            # the rows hold their intervals at 40; the report shows those at 400
            held = np.mean([r["metrics"]["ci"][metric] for r in method_rows], axis=0)
            assert at_40 == pytest.approx(held)
            if _cell(at_400) != _cell(at_40):
                assert _cell(at_400) in report and _cell(at_40) not in report
                changed += 1
    assert changed  # the check above is not empty


def test_a_rerun_at_n_boot_0_shows_no_intervals_and_back_at_40_shows_them(tmp_path):
    # Before: each run fitted every method again, and rows made at 0 held no intervals.
    _, with_intervals = _run(tmp_path, 40)
    rows, without = _run(tmp_path, 0)
    assert "(95 % CI)" in with_intervals and "(95 % CI)" not in without
    assert "without intervals (n_boot is 0)" in without
    again, report = _run(tmp_path, 40)
    assert again == rows and report == with_intervals  # rows made at 0 show their intervals


def test_intervals_from_predictions_equal_those_the_rows_hold_at_their_n_boot(tmp_path):
    # The report recomputes what compute_metrics stored, bit for bit, at the same n_boot and
    # seed: reports of runs made before are unchanged (an SVM's own predictions included).
    rows, _ = _run(tmp_path, 40)
    for s in summarize(rows, 40):
        for metric in SCORES:
            stored = np.mean([r["metrics"]["ci"][metric] for r in s.rows], axis=0)
            assert s.score_ci(metric) == tuple(float(v) for v in stored)


@pytest.mark.parametrize("acc", [0.7, 0.95, 1.0])
def test_the_seed_mean_interval_is_a_wilson_interval_never_narrower_than_its_image_spread(acc):
    # What the report says of it: the Wilson interval of one proportion at the seeds' mean,
    # over the test images, at least as wide as the mean's spread over them (a percentile
    # bootstrap of the mean over images, seeds kept paired) and still wide at 100 %.
    from test_report import make_row

    from featpipe.evaluate.metrics import wilson_interval

    rows = [make_row("toy/mlp@pooled", acc=acc, seed=s, n=200) for s in range(5)]
    (s,) = summarize(rows)
    hits = np.array([np.equal(r["test"]["y_true"], r["test"]["y_pred"]) for r in rows])
    assert s.top1_ci == wilson_interval(hits.mean(), 200)
    idx = np.random.default_rng(0).integers(0, 200, size=(4000, 200))
    lo, hi = np.quantile(hits.mean(axis=0)[idx].mean(axis=1), [0.025, 0.975])
    assert s.top1_ci[0] <= lo and hi <= s.top1_ci[1] + 1e-12
    assert s.top1_ci[1] - s.top1_ci[0] > (hi - lo) + (0.01 if acc == 1.0 else 0.0)
    md = render_markdown(build_document(rows, n_boot=40))
    assert "Wilson score interval over the test images of one proportion at that mean" in md
    assert "as if each image were right in all of them or in none" in md
