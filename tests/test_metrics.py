"""compute_metrics on hand-made cases, cross-checked against scikit-learn where it can be."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, log_loss

from featpipe.errors import ConfigError
from featpipe.evaluate import aggregate_over_seeds, compute_metrics, expected_calibration_error


def one_hot(pred, n_classes, confidence=1.0):
    p = np.full((len(pred), n_classes), (1 - confidence) / max(n_classes - 1, 1))
    p[np.arange(len(pred)), pred] = confidence
    return p


def test_perfect_predictions():
    y = np.array([0, 1, 2, 2, 1, 0])
    m = compute_metrics(y, one_hot(y, 3), ["a", "b", "c"], n_boot=200)
    assert m["top1"] == m["balanced_accuracy"] == m["macro_f1"] == 1.0
    assert m["log_loss"] == pytest.approx(0.0, abs=1e-9)
    assert m["ece"] == pytest.approx(0.0)
    assert m["confusion"] == [[2, 0, 0], [0, 2, 0], [0, 0, 2]]
    assert m["per_class_accuracy"] == {"a": 1.0, "b": 1.0, "c": 1.0}
    assert m["ci"]["top1"] == [pytest.approx(0.6097, abs=1e-4), 1.0]  # Wilson: 6 of 6
    assert "top5" not in m  # only with more than 5 classes


def test_all_wrong():
    y = np.array([0, 1, 2, 0, 1, 2])
    m = compute_metrics(y, one_hot((y + 1) % 3, 3, confidence=0.9), n_boot=0)
    assert m["top1"] == m["balanced_accuracy"] == m["macro_f1"] == 0.0
    assert m["log_loss"] == pytest.approx(-np.log(0.05))
    assert m["ece"] == pytest.approx(0.9)  # confident at 0.9, accuracy 0
    assert m["ci"] == {}


def test_known_confusion_matrix_and_sklearn_agreement():
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    pred = np.array([0, 0, 1, 1, 0, 2, 2, 3, 2, 3])
    m = compute_metrics(y, one_hot(pred, 4, 0.7), n_boot=0)
    assert m["confusion"] == [[2, 1, 0, 0], [1, 1, 0, 0], [0, 0, 3, 1], [0, 0, 0, 1]]
    assert m["top1"] == pytest.approx(0.7)
    # recalls 2/3, 1/2, 3/4, 1 -> mean 0.729166...
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 3 / 4 + 1) / 4)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["per_class_accuracy"]["1"] == pytest.approx(0.5)


def test_log_loss_matches_sklearn_and_top5():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 8, 300)
    proba = rng.dirichlet(np.ones(8), 300)
    m = compute_metrics(y, proba, n_boot=0)
    assert m["log_loss"] == pytest.approx(log_loss(y, proba, labels=range(8)))
    top5 = np.argsort(-proba, axis=1)[:, :5]
    assert m["top5"] == pytest.approx(np.mean([y[i] in top5[i] for i in range(len(y))]))


def test_ece_hand_computed():
    # Bin (0.6, 0.667]: two samples at 0.65 confidence, one right -> |0.5 - 0.65| * 2/4.
    # Bin (0.867, 0.933]: two samples at 0.9, both right -> |1 - 0.9| * 2/4.
    proba = np.array([[0.65, 0.35], [0.65, 0.35], [0.9, 0.1], [0.1, 0.9]])
    y = np.array([0, 1, 0, 1])
    expected = 0.5 * 0.15 + 0.5 * 0.1
    assert expected_calibration_error(y, proba) == pytest.approx(expected)
    assert compute_metrics(y, proba, n_boot=0)["ece"] == pytest.approx(expected)


def test_absent_class_has_no_per_class_accuracy():
    y = np.array([0, 0, 1, 1])
    m = compute_metrics(y, one_hot(y, 3), ["a", "b", "c"], n_boot=0)
    assert m["per_class_accuracy"]["c"] is None
    assert m["balanced_accuracy"] == 1.0


def _noisy(n, acc, seed=0, n_classes=4):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    pred = np.where(rng.random(n) < acc, y, (y + 1) % n_classes)
    return y, one_hot(pred, n_classes, 0.8)


def test_bootstrap_ci_contains_estimate_and_narrows_with_n():
    widths = []
    for n in (100, 2000):
        y, proba = _noisy(n, 0.75)
        m = compute_metrics(y, proba, n_boot=500, seed=1)
        for name in ("top1", "balanced_accuracy", "macro_f1", "log_loss"):
            lo, hi = m["ci"][name]
            assert lo <= m[name] <= hi, name
        widths.append(m["ci"]["top1"][1] - m["ci"]["top1"][0])
    assert widths[1] < widths[0] / 2  # ~ 1/sqrt(n): 20x the data, ~4.5x narrower


def test_bootstrap_is_seeded():
    y, proba = _noisy(300, 0.6)
    a = compute_metrics(y, proba, n_boot=200, seed=3)["ci"]
    assert a == compute_metrics(y, proba, n_boot=200, seed=3)["ci"]
    assert a != compute_metrics(y, proba, n_boot=200, seed=4)["ci"]


def test_rows_are_renormalised():
    y = np.array([0, 1])
    m = compute_metrics(y, np.array([[2.0, 0.0], [1.0, 3.0]]), n_boot=0)
    assert m["log_loss"] == pytest.approx(-np.log(0.75) / 2)


@pytest.mark.parametrize(
    ("y", "proba", "match"),
    [
        ([0, 1], np.ones(2), "2-d"),
        ([0, 1, 1], np.ones((2, 2)), "one label per row"),
        ([0, 2], np.ones((2, 2)), "2 columns"),
        ([0.0, 1.0], np.ones((2, 2)), "integer"),
        ([0, 1], -np.ones((2, 2)), "non-negative"),
    ],
)
def test_bad_inputs_raise(y, proba, match):
    with pytest.raises(ConfigError, match=match):
        compute_metrics(np.asarray(y), proba, n_boot=0)


def test_aggregate_over_seeds():
    runs = [{"top1": 0.8, "ece": 0.1, "log_loss": None}, {"top1": 0.9, "ece": 0.3}]
    agg = aggregate_over_seeds(runs)
    assert agg["top1"]["mean"] == pytest.approx(0.85)
    assert agg["top1"]["std"] == pytest.approx(np.std([0.8, 0.9], ddof=1))
    assert agg["ece"]["n"] == 2
    assert "log_loss" not in agg  # no seed has it
    assert aggregate_over_seeds(runs[:1])["top1"]["std"] == 0.0


def test_own_predictions_override_the_argmax():
    # An SVM's predict can differ from the argmax of its scores (ties in the one-vs-one
    # vote): the metrics follow the predictions the head itself makes.
    y = np.array([0, 1, 2, 2])
    scores = one_hot(np.array([0, 1, 1, 2]), 3, 0.6)
    m = compute_metrics(y, scores, n_boot=0, y_pred=np.array([0, 1, 2, 2]))
    assert m["top1"] == m["balanced_accuracy"] == 1.0
    assert m["confusion"] == [[1, 0, 0], [0, 1, 0], [0, 0, 2]]
    assert compute_metrics(y, scores, n_boot=0)["top1"] == 0.75
    with pytest.raises(ConfigError, match=r"y_pred holds 0\.\.3"):
        compute_metrics(y, scores, n_boot=0, y_pred=np.array([0, 1, 3, 2]))
    with pytest.raises(ConfigError, match="one integer class index per test row"):
        compute_metrics(y, scores, n_boot=0, y_pred=np.array([0, 1]))
