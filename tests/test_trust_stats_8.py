"""Trust review of the Recommendation's tie list (Holm's correction over the methods compared
with the chosen one) and of the intervals of balanced accuracy and macro F1."""

from __future__ import annotations

import copy
import tracemalloc

import numpy as np
import pytest
from sklearn import metrics as skm
from test_report import CLASSES, make_row

from featpipe.evaluate import compute_metrics
from featpipe.report.advice import advise, recommendation
from featpipe.report.summary import references, summarize

N = 400


def _row(name: str, pred: np.ndarray, val: float, seed: int = 0) -> dict:
    """A probe row whose test predictions are ``pred`` on N images of 6 classes."""
    row = copy.deepcopy(make_row("toy/logreg@pooled", n=N, seed=seed))
    y = np.asarray(row["test"]["y_true"])
    proba = np.full((N, len(CLASSES)), 0.04)
    proba[np.arange(N), pred] = 0.8
    row["method"] = row["label"] = name
    row["val_accuracy"] = val
    row["test"]["y_pred"] = pred.tolist()
    row["metrics"] = compute_metrics(y, proba, CLASSES, n_boot=200, seed=seed)
    return row


def _family(others: int) -> list[dict]:
    """The chosen method (best on validation), ``others`` methods with its predictions, and
    one more that is wrong on 12 images the chosen gets right and right on 2 it gets wrong:
    McNemar's exact p = 0.013, and the paired interval of 2.5 points excludes 0."""
    y = np.arange(N) % len(CLASSES)
    chosen = np.where(np.arange(N) < 40, (y + 1) % len(CLASSES), y)  # wrong on the first 40
    other = chosen.copy()
    other[100:112] = (y[100:112] + 1) % len(CLASSES)
    other[:2] = y[:2]
    rows = [_row("chosen", chosen, 0.95)]
    rows += [_row(f"same{i}", chosen.copy(), 0.9) for i in range(others)]
    return [*rows, _row("differs", other, 0.9)]


def test_one_low_p_among_many_methods_compared_is_not_a_difference():
    # With 12 methods of equal accuracy, some method fell out of the tie list by chance in 25 to
    # 31 % of simulated runs (360 test images; 2 % with Holm's correction). A p of 0.013 among 11
    # comparisons is what chance gives: Holm-adjusted, 0.14.
    summaries = summarize(_family(others=10))
    advice = advise(summaries, n_boot=200)
    assert [s.label for s in advice.tied] == [f"same{i}" for i in range(10)] + ["differs"]
    assert advice.ahead == [] and advice.compared == 11
    text = recommendation(summaries, n_boot=200)[0]
    assert "Holm-adjusted over the 11 methods compared" in text
    assert text.count("differs (") == 1  # named among the tied


def test_one_low_p_as_the_only_comparison_is_still_a_difference():
    summaries = summarize(_family(others=0))
    advice = advise(summaries, n_boot=200)
    assert advice.tied == [] and advice.compared == 1
    text = recommendation(summaries, n_boot=200)[0]
    assert "No other method is statistically tied with it on test." in text
    assert "Holm" not in text


def test_the_probe_a_fine_tune_is_compared_with_is_tied_after_holm():
    # references: the cheapest probe tied with the best one, among the probes.
    rows = _family(others=10)
    for row in rows[1:-1]:
        row["cost"]["total_seconds"] = 100.0
    rows[-1]["cost"]["total_seconds"] = 0.5  # "differs" is the cheapest
    summaries = summarize(rows)
    assert [s.label for s in references(summaries, n_boot=200)] == ["chosen", "differs"]


def test_the_bootstrap_of_many_classes_holds_no_confusion_per_resample():
    # Each batch of 100 resamples held 100 C x C confusions: 800 MB at 1,000 classes (ImageNet),
    # 80 GB at 10,000; balanced accuracy and macro F1 need only three counts per class.
    rng = np.random.default_rng(0)
    n_classes, n = 500, 100
    y = rng.integers(0, n_classes, n)
    proba = rng.random((n, n_classes))
    tracemalloc.start()
    try:
        compute_metrics(y, proba, n_boot=100)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20  # 100 confusions of 500 classes are 200 MB of counts


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_resampled_scores_are_scikit_learns():
    from featpipe.evaluate.metrics import resampled_scores

    rng = np.random.default_rng(1)
    y, pred = rng.integers(0, 7, 60), rng.integers(0, 7, 60)
    pred[:30] = y[:30]
    idx = rng.integers(0, 60, size=(5, 60))
    scores = resampled_scores(y, pred, idx, 7)
    for b, rows in enumerate(idx):
        yt, yp = y[rows], pred[rows]
        assert scores["top1"][b] == skm.accuracy_score(yt, yp)
        assert np.isclose(scores["balanced_accuracy"][b], skm.balanced_accuracy_score(yt, yp))
        assert np.isclose(scores["macro_f1"][b], skm.f1_score(yt, yp, average="macro"))
