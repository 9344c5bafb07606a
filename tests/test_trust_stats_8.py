"""Trust review of the Recommendation's tie list (Holm's correction over the methods compared
with the chosen one) and of the intervals of balanced accuracy and macro F1."""

from __future__ import annotations

import copy
import json
import tracemalloc

import numpy as np
import pytest
from sklearn import metrics as skm
from test_report import CLASSES, make_row, make_rows

from featpipe.errors import ConfigError
from featpipe.evaluate import compute_metrics
from featpipe.report.advice import advise, recommendation
from featpipe.report.content import Table, build_document
from featpipe.report.markdown import render_markdown
from featpipe.report.results import ResultsFormatError, read_results
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


def _cells(doc, label: str) -> dict[str, str]:
    results = next(s for s in doc.sections if s.title == "Results")
    table = next(b for b in results.blocks if isinstance(b, Table))
    row = next(r for r in table.rows if r[0] == label)
    return dict(zip(table.header, row, strict=True))


def test_the_results_table_gives_balanced_accuracy_and_macro_f1_their_intervals():
    rows = [make_row("toy/logreg@pooled", acc=0.7, seed=s) for s in (0, 1)]
    rows.append(make_row("toy/knn@pooled", acc=0.8, head="knn"))
    cells = _cells(build_document(rows, n_boot=100), "toy/knn@pooled")
    m = rows[2]["metrics"]
    for metric, column in (("balanced_accuracy", "balanced acc %"), ("macro_f1", "macro F1 %")):
        lo, hi = m["ci"][metric]
        assert lo < m[metric] < hi
        want = f"{100 * m[metric]:.1f} ({100 * lo:.1f}–{100 * hi:.1f})"
        assert cells[f"{column} (95 % CI)"] == want
    # Two seeds on the same test images: the mean of their intervals, about their mean.
    cells = _cells(build_document(rows, n_boot=100), "toy/logreg@pooled")
    ci = np.mean([r["metrics"]["ci"]["macro_f1"] for r in rows[:2]], axis=0)
    assert cells["macro F1 % (95 % CI)"].endswith(f"({100 * ci[0]:.1f}–{100 * ci[1]:.1f})")
    # Without a bootstrap (n_boot 0) the rows hold no interval: the cell shows none, and the
    # header promises none (36d010e).
    for row in rows:
        row["metrics"]["ci"] = {}
    cells = _cells(build_document(rows, n_boot=0), "toy/knn@pooled")
    assert cells["balanced acc %"] == f"{100 * m['balanced_accuracy']:.1f}"


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_paired_balanced_accuracy_and_macro_f1_use_the_accuracy_resamples():
    from featpipe.evaluate.compare import paired_bootstrap, paired_score_bootstrap

    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 80)
    a = np.where(rng.random(80) < 0.8, y, (y + 1) % 4)
    b = np.where(rng.random(80) < 0.6, y, (y + 2) % 4)
    got = paired_score_bootstrap(y, a, b, 4, n_boot=150, seed=7)
    # By hand: the resamples paired_bootstrap draws with seed 7 (100 at a time).
    draw = np.random.default_rng(7)
    idx = np.concatenate([draw.integers(0, 80, size=(k, 80)) for k in (100, 50)])
    for metric, score in (
        ("balanced_accuracy", skm.balanced_accuracy_score),
        ("macro_f1", lambda t, p: skm.f1_score(t, p, average="macro")),
    ):
        diffs = [score(y[i], a[i]) - score(y[i], b[i]) for i in idx]
        want = (score(y, a) - score(y, b), *np.quantile(diffs, [0.025, 0.975]))
        assert got[metric] == pytest.approx(want)
    # The same draws give paired_bootstrap its accuracy interval.
    acc = [np.mean(y[i] == a[i]) - np.mean(y[i] == b[i]) for i in idx]
    lo, hi = np.quantile(acc, [0.025, 0.975])
    assert paired_bootstrap(y == a, y == b, n_boot=150, seed=7)[1:] == pytest.approx((lo, hi))


def test_the_paired_comparisons_give_balanced_accuracy_and_macro_f1_differences():
    rows = make_rows()
    text = render_markdown(build_document(rows, n_boot=100))
    section = text[text.index("## Paired comparisons") :]
    lines = [line for line in section.splitlines() if line.startswith("- toy/finetune")]
    assert lines
    for line in lines:
        assert "; difference in balanced accuracy " in line and ", in macro F1 " in line
        assert line.count("95 % CI") == 3


@pytest.mark.parametrize("n_boot", [-1, 2.5, True, "100"])
def test_compute_metrics_refuses_an_n_boot_that_is_not_a_whole_number(n_boot):
    # -1 gave no interval without a word, True one resample ([1.0, 1.0]), 2.5 and "100" a
    # TypeError from Python; paired_bootstrap already refused them (FineTuner.evaluate passes
    # its n_boot here).
    y = np.arange(6) % 3
    with pytest.raises(ConfigError, match=r"n_boot must be an integer >= 0 .*got"):
        compute_metrics(y, np.eye(3)[y], n_boot=n_boot)


@pytest.mark.parametrize(
    ("field", "value"), [("y_pred", 6), ("y_pred", -1), ("y_true", 1.0), ("y_true", None)]
)
def test_a_row_whose_test_labels_are_not_class_indices_is_refused(tmp_path, field, value):
    # A results file featpipe did not write: y_pred 6 of 6 classes counted as a wrong answer
    # without a word, and the paired balanced accuracy could not count it by class.
    row = make_row("toy/logreg@pooled")
    row["test"][field][3] = value
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(ResultsFormatError, match=rf"results.jsonl:1: test.{field} holds"):
        read_results(path)
