"""Trust review of the numbers reports print: metrics, paired comparisons and the Recommendation's
choice and ties, each against an independent reference (scikit-learn, scipy, a hand count)."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm
from test_report import make_row

from featpipe.evaluate import compute_metrics, expected_calibration_error, holm, mcnemar
from featpipe.report.advice import recommendation
from featpipe.report.summary import summarize

C = 10


def test_top5_counts_classes_tied_with_the_true_one_against_it():
    # A 1-nearest-neighbour head gives one-hot probabilities: it ranks one class, so its top-5
    # is its top-1. An arbitrary order among the nine zero-probability classes credited some
    # of them, by class number (0.69 here, 0.74 with the classes renumbered).
    rng = np.random.default_rng(0)
    y = rng.integers(0, C, 400)
    proba = np.eye(C)[np.where(rng.random(400) < 0.5, y, rng.integers(0, C, 400))]
    m = compute_metrics(y, proba, n_boot=0)
    assert m["top5"] == m["top1"]
    perm = rng.permutation(C)  # the same predictions with the classes numbered otherwise
    assert compute_metrics(perm[y], proba[:, np.argsort(perm)], n_boot=0)["top5"] == m["top5"]
    # A tie across the cut counts as a miss; a tie inside the top 5 as a hit.
    proba = np.array([[0.5, 0.1, 0.1, 0.1, 0.1, 0.1, 0, 0], [0.3, 0.2, 0.2, 0.2, 0.1, 0, 0, 0]])
    assert compute_metrics(np.array([5, 3]), proba, n_boot=0)["top5"] == 0.5


def test_top5_without_ties_is_scikit_learns():
    rng = np.random.default_rng(1)
    y, proba = rng.integers(0, C, 200), rng.dirichlet(np.ones(C), 200)
    m = compute_metrics(y, proba, n_boot=0)
    assert m["top5"] == pytest.approx(skm.top_k_accuracy_score(y, proba, k=5))
    assert "top5" not in compute_metrics(y % 5, proba[:, :5], n_boot=0)  # always 1 with 5


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize(
    "y, pred",
    [
        ([0, 0, 1, 1, 2, 2], [1, 0, 1, 0, 1, 1]),  # class 2 never predicted
        ([0, 0, 1, 1], [2, 0, 1, 1]),  # class 2 predicted, absent from test
        ([0], [1]),  # one test image
        ([1, 1, 1], [0, 0, 0]),  # all wrong
    ],
)
def test_scores_with_a_class_absent_match_scikit_learn(y, pred):
    y, pred = np.array(y), np.array(pred)
    proba = np.eye(3)[pred] * 0.7 + 0.1
    proba[0] = np.eye(3)[pred[0]]  # the first row gives its true class probability 0
    m = compute_metrics(y, proba, n_boot=0)
    assert m["top1"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0))
    clipped = np.clip(proba, 1e-15, None)  # featpipe's clip of a zero probability
    assert m["log_loss"] == pytest.approx(
        skm.log_loss(y, clipped / clipped.sum(1, keepdims=True), labels=[0, 1, 2]), rel=1e-9
    )


def test_ece_matches_explicit_bins():
    # Guo et al.'s bins (lo, hi] over np.linspace edges, one bin at a time.
    def ece(y, p, n_bins=15):
        conf, right = p.max(1), p.argmax(1) == y
        edges = np.linspace(0, 1, n_bins + 1)
        total = 0.0
        for lo, hi in itertools.pairwise(edges):
            inside = (conf > lo) & (conf <= hi)
            if inside.any():
                total += inside.mean() * abs(right[inside].mean() - conf[inside].mean())
        return total

    rng = np.random.default_rng(2)
    for n, k in [(1, 3), (7, 5), (50, 10)]:
        p = rng.dirichlet(np.ones(k) * 0.5, n)
        p[0] = 1 / k  # a confidence on a bin edge (1/5 = 3/15, 1/3 = 5/15)
        y = rng.integers(0, k, n)
        assert expected_calibration_error(y, p) == pytest.approx(ece(y, p), abs=1e-12)


def test_mcnemar_matches_the_binomial_test_and_the_corrected_chi_square():
    for b, c in [(0, 0), (1, 0), (3, 9), (12, 12), (20, 5), (40, 15), (30, 30)]:
        a = np.r_[np.ones(b, bool), np.zeros(c, bool), [True, False]]
        other = np.r_[np.zeros(b, bool), np.ones(c, bool), [True, False]]
        r = mcnemar(a, other)
        if b + c == 0:
            expected = 1.0
        elif b + c < 25:
            expected = stats.binomtest(b, b + c, 0.5).pvalue
        else:
            expected = stats.chi2.sf(max(abs(b - c) - 1, 0) ** 2 / (b + c), 1)
        assert (r.b, r.c) == (b, c)
        assert r.p_value == pytest.approx(expected, rel=1e-12)


def test_holm_matches_a_hand_count():
    # p sorted: 0.01 (x4), 0.02 (x3 -> 0.06), 0.03 (x2 -> 0.06), 0.04 (x1 -> 0.06)
    assert holm([0.04, 0.01, 0.03, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert holm([0.5, 0.5]) == [1.0, 1.0]


def _rows(*vals):
    rows = [make_row("toy/logreg@pooled", acc=0.8)]
    for i in range(1, len(vals)):
        row = copy.deepcopy(rows[0])
        row["method"] = row["label"] = f"toy/other{i}@pooled"
        rows.append(row)
    for row, val in zip(rows, vals, strict=True):
        row["val_accuracy"] = val
    return rows


def test_the_tie_sentence_names_mcnemar_when_there_is_no_bootstrap_interval():
    # With n_boot = 0 ties are McNemar's call (summary.ties); the sentence named an interval
    # that was never computed.
    text = recommendation(summarize(_rows(0.9, 0.8)), n_boot=0)[0]
    assert "Statistically tied with it on test (McNemar's test finds no difference" in text
    assert "interval of the difference includes 0" not in text
    text = recommendation(summarize(_rows(0.9, 0.8)), n_boot=50)[0]
    assert (
        "(the paired interval of the difference includes 0, or McNemar's test finds "
        "no difference): toy/other1"
    ) in text


def test_a_nan_validation_score_is_never_chosen():
    # A NaN (a results file featpipe did not write) was chosen when it came first in run
    # order ("best validation accuracy (nan %)") and ignored when it came later.
    for vals in [(float("nan"), 0.7), (0.7, float("nan"))]:
        rows = _rows(*vals)
        chosen = rows[vals.index(0.7)]["label"]
        assert recommendation(summarize(rows), n_boot=0)[0].startswith(f"Use {chosen}: ")
    text = recommendation(summarize(_rows(float("nan"), float("nan"))), n_boot=0)
    assert text == ["No method has a validation score, so the report makes no recommendation."]


def test_equal_validation_scores_choose_the_first_in_run_order():
    rows = _rows(0.8, 0.8, 0.8)
    for order in (rows, rows[::-1]):
        text = recommendation(summarize(order), n_boot=50)[0]
        assert text.startswith(f"Use {order[0]['label']}: ")
        assert "Statistically tied with it on test" in text  # identical predictions
