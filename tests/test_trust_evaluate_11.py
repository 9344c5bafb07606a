"""Round 11 checks of evaluate/ and report/: memory of the data checks, classes without
images, and comparisons whose gap rounds to zero."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score
from test_report import make_row

from featpipe.evaluate import compute_metrics, leakage
from featpipe.evaluate.compare import Comparison, McNemarResult
from featpipe.evaluate.leakage import check_data, check_store
from featpipe.report.content import build_document
from featpipe.report.markdown import render_markdown
from featpipe.store.writer import write_arrays


def test_the_data_checks_hold_the_pooled_features_about_once(tmp_path, monkeypatch):
    # Small similarity blocks, so that the features dominate the peak.
    monkeypatch.setattr(leakage, "_SIMILARITIES", 2**16)
    rng = np.random.default_rng(0)
    features = rng.standard_normal((20_000, 512), dtype=np.float32)
    features[18_000:18_010] = features[:10] * 2  # near-duplicates of train rows in test
    splits = ["train"] * 16_000 + ["val"] * 2_000 + ["test"] * 2_000
    store = write_arrays(
        tmp_path / "s.h5", {"pooled": features}, np.zeros(20_000, int), splits, ["x"]
    )
    tracemalloc.start()
    try:
        checks = check_store(store)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        store.close()
    assert peak < 2 * features.nbytes  # 4.4 copies before (store blocks, concatenated,
    # float32 copy, reference rows); now once, plus 2 stored chunks read and ids
    assert sorted(t for t, _, _ in checks.near) == [str(i) for i in range(18_000, 18_010)]
    # Features handed to check_data are the caller's: not scaled in place.
    before = features[:200].copy()
    check_data(
        [str(i) for i in range(200)],
        np.zeros(200, int),
        splits[:100] + ["test"] * 100,
        ["x"],
        features=features[:200],
    )
    assert np.array_equal(features[:200], before)


CLASSES10 = [str(c) for c in range(10)]


def _gappy_row(method: str, acc: float, kind: str = "probe") -> dict:
    """A row on integer labels 0, 5 and 9 of classes '0'..'9': the others have no images, so
    a probe gives them no probability (its head never saw them)."""
    row = make_row(method, kind, acc=acc, mode=None if kind == "probe" else "full")
    rng = np.random.default_rng(len(method))
    y = np.array([0, 5, 9])[np.arange(120) % 3]
    pred = np.where(rng.random(120) < acc, y, np.roll(y, 1))
    proba = np.zeros((120, 10))
    proba[:, [0, 5, 9]] = 0.1
    proba[np.arange(120), pred] = 0.8
    row["classes"] = CLASSES10
    row["metrics"] = compute_metrics(y, proba, CLASSES10, n_boot=100)
    row["test"]["y_true"], row["test"]["y_pred"] = y.tolist(), pred.tolist()
    return row


def test_classes_without_images_are_left_out_of_the_report_and_top5():
    # Integer labels 0, 5, 9 make classes '1'..'4', '6'..'8' empty: the report counted 10
    # classes, listed 7 empty per-class rows and gave top-5 (100 %: 3 classes to rank).
    rows = [_gappy_row("toy/logreg@pooled", 0.8), _gappy_row("toy/finetune:full", 0.9, "finetune")]
    metrics = rows[0]["metrics"]
    assert "top5" not in metrics and "top5" not in metrics["ci"]
    # The class averages already leave the empty classes out (scikit-learn's definitions).
    y, pred = rows[0]["test"]["y_true"], rows[0]["test"]["y_pred"]
    assert metrics["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert metrics["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    md = render_markdown(build_document(rows, n_boot=50))
    assert (
        "on 120 test images of 3 classes (7 more classes have no test images: 1, 2, 3, 4, "
        "6, 7, 8; left out of the per-class table and the class averages"
    ) in md
    per_class = md[md.index("Per-class accuracy") :]
    per_class = per_class[: per_class.index("\n\n", per_class.index("|"))]
    assert "(classes without test images left out):" in per_class
    assert [line.split("|")[1].strip() for line in per_class.splitlines()[4:]] == ["0", "5", "9"]


def test_a_clear_gap_below_a_twentieth_of_a_point_is_not_shown_as_zero():
    # A clear 0.04-point gap (a large test set) read "A beats B by 0.0 points (95 % CI 0.0
    # to 0.1, ...)".
    test = McNemarResult(10, 210, 180.0, 1e-30, "chi2")
    clear = Comparison("A", "B", 0.0004, 0.0001, 0.0007, test, None)
    assert clear.sentence().startswith("A beats B by 0.040 points (95 % CI 0.010 to 0.070,")
    behind = Comparison("A", "B", -0.0004, -0.0007, -0.0001, test, None)
    assert behind.sentence().startswith("A trails B by 0.040 points (95 % CI 0.010 to 0.070,")
    # Gaps of a twentieth of a point or more keep one decimal.
    usual = Comparison("A", "B", 0.031, 0.022, 0.040, test, None)
    assert usual.sentence().startswith("A beats B by 3.1 points (95 % CI 2.2 to 4.0,")
