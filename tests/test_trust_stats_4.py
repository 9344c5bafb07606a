"""Trust review of the top-1 interval (Wilson, not a percentile bootstrap, whose coverage
collapses near 100 %) and of the Recommendation's cost sentence with costs of 0 s."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from scipy import stats
from test_report import make_row

from featpipe.evaluate import compute_metrics
from featpipe.evaluate.metrics import wilson_interval
from featpipe.report.advice import recommendation
from featpipe.report.content import build_document
from featpipe.report.summary import references, summarize


def _scipy_wilson(k: int, n: int) -> tuple[float, float]:
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return ci.low, ci.high


@pytest.mark.parametrize(
    "k, n", [(0, 1), (1, 1), (20, 20), (0, 20), (49, 50), (7, 10), (995, 1000)]
)
def test_the_wilson_interval_is_scipys(k, n):
    assert wilson_interval(k / n, n) == pytest.approx(_scipy_wilson(k, n), abs=1e-12)


def test_a_perfect_score_on_20_rows_has_an_interval_of_width_above_0():
    # The percentile bootstrap of 20 right out of 20 resamples only 1s: "95 % CI 100.0-100.0".
    row = make_row("toy/logreg@pooled", acc=1.0, n=20)
    assert row["metrics"]["top1"] == 1.0
    lo, hi = row["metrics"]["ci"]["top1"]
    assert (lo, hi) == pytest.approx(_scipy_wilson(20, 20)) and hi - lo > 0.15
    assert "95 % CI 83.9–100.0" in recommendation(summarize([row]), n_boot=100)[0]
    # Rows written before (a bootstrap's [1, 1] stored) are shown with the same interval.
    row["metrics"]["ci"]["top1"] = [1.0, 1.0]
    assert summarize([row])[0].top1_ci == pytest.approx(_scipy_wilson(20, 20))


@pytest.mark.parametrize("n, p", [(50, 0.98), (100, 0.99)])
def test_the_top1_interval_covers_the_true_accuracy_about_95_percent_of_the_time(n, p):
    # The percentile bootstrap covered 66 % (n=50) and 63 % (n=100) of the time here.
    rng = np.random.default_rng(0)
    y = np.arange(n) % 2
    covered = []
    for _ in range(300):
        pred = np.where(rng.random(n) < p, y, 1 - y)
        lo, hi = compute_metrics(y, np.eye(2)[pred], n_boot=50, seed=1)["ci"]["top1"]
        covered.append(lo <= p <= hi)
    assert np.mean(covered) > 0.9


def test_the_interval_over_seeds_is_the_mean_on_one_seeds_test_images():
    # Three seeds tested the same 120 images: their mean top-1 gets the interval of 120
    # images, not of 360 (the pooled counts would count each image three times).
    rows = [make_row("toy/logreg@pooled", acc=0.8, seed=s) for s in range(3)]
    s = summarize(rows)[0]
    assert len({r["metrics"]["top1"] for r in rows}) > 1
    assert s.top1_ci == pytest.approx(wilson_interval(s.top1, 120), abs=1e-12)
    assert s.top1_ci[0] < s.top1 < s.top1_ci[1]


def test_no_report_text_calls_the_top1_interval_a_percentile_bootstrap():
    doc = build_document([make_row("toy/logreg@pooled")], n_boot=50)
    texts = [b for s in doc.sections for b in s.blocks if isinstance(b, str)]
    texts += [f.caption for f in doc.figures()]
    assert not [t for t in texts if "percentile bootstrap" in t]
    assert any("Wilson score interval" in t for t in texts)


def _tied(*seconds):
    """Methods with the same predictions (so tied on test), best validation first."""
    rows = []
    for i, total in enumerate(seconds):
        row = copy.deepcopy(make_row("toy/logreg@pooled"))
        row["method"] = row["label"] = f"m{i}"
        row["val_accuracy"] = 0.9 - i / 100
        row["cost"].update(extraction_seconds=0.0, fit_seconds=total, predict_seconds=0.0)
        row["cost"]["total_seconds"] = total
        rows.append(row)
    return summarize(rows)


def test_a_chosen_method_measured_at_0_seconds_is_the_cheapest():
    # It was skipped as if unknown: "The cheapest of these is m1 ... (4.1 s against 0.0 s)".
    text = recommendation(_tied(0.0, 4.1), n_boot=50)[0]
    assert "It is also the cheapest of them." in text
    assert "The cheapest of these" not in text


def test_a_tied_method_measured_at_0_seconds_is_the_cheapest_without_a_ratio():
    # It was skipped: the 4.1 s chosen method was "also the cheapest of them".
    text = recommendation(_tied(4.1, 0.0), n_boot=50)[0]
    assert "It is also the cheapest" not in text
    assert "The cheapest of these is m1, at a cost measured as 0 s (0.0 s against 4.1 s" in text
    assert "inf" not in text and "1/" not in text
    # The probes a fine-tune is compared with: the best, and the cheapest tied with it.
    summaries = _tied(4.1, 0.0)
    assert references(summaries, n_boot=50) == summaries


def test_one_method_is_one_method():
    text = recommendation(summarize([make_row("toy/logreg@pooled")]), n_boot=0)[0]
    assert "of 1 method, and scores" in text
