"""Wording and drawing of what the report shows: counts without "(s)", a run's total that its
rounded parts add up to, and the training-size plot's legend and error bars."""

from __future__ import annotations

import re

import numpy as np
import pytest
from test_report import make_row

from featpipe.evaluate.leakage import DataChecks
from featpipe.report import plots
from featpipe.report.content import _cost_lines
from featpipe.report.summary import summarize


def _checks(n: int) -> DataChecks:
    """Checks that find ``n`` of each problem: duplicates, conflicting labels, small classes and
    images the perceptual hash did not compare."""
    return DataChecks(
        basis="by content hash",
        duplicates=[[["train", f"a{i}"], ["test", f"b{i}"]] for i in range(n)],
        near=[],
        near_layer="pooled",
        small_classes={"val": {f"class{i}": 2 for i in range(n)}},
        test_ids=[f"b{i}" for i in range(n)],
        counts={"train": 20, "val": 10, "test": 5},
        hash_bits=6,
        unhashed={"train": n},
        conflicts=[[["train", f"a{i}", "cat"], ["val", f"c{i}", "dog"]] for i in range(n)],
    )


@pytest.mark.parametrize(
    ("n", "said"),
    [
        (
            1,
            [
                "1 image appears in more than one split",
                "1 image carries more than one label",
                "1 class has fewer than 10 val images",
                "The perceptual hash did not compare 1 train image:",
            ],
        ),
        (
            2,
            [
                "2 images appear in more than one split",
                "2 images carry more than one label",
                "2 classes have fewer than 10 val images",
                "The perceptual hash did not compare 2 train images:",
            ],
        ),
    ],
)
def test_data_checks_count_images_and_classes_without_s_in_brackets(n, said):
    text = " ".join(_checks(n).lines())
    for sentence in said:
        assert sentence in text
    assert "(s)" not in text and "(es)" not in text


def test_the_whole_run_is_the_sum_of_its_rounded_parts():
    # 1.44 + 245.94 + 0.04 = 247.42 s, shown 247.4, while its parts show 1.4 + 245.9 + 0.0
    row = make_row("toy/logreg@pooled", fit_seconds=245.94)
    row["cost"].update(extraction_seconds=1.44, predict_seconds=0.04)
    (line,) = [ln for ln in _cost_lines([row]) if ln.startswith("whole run")]
    total, *parts = map(float, re.findall(r"(\d+\.\d) s", line))
    assert parts == [1.4, 245.9, 0.0]
    assert f"{total:.1f}" == f"{sum(parts):.1f}" == "247.3"


def _sweep():
    """kNN and logistic regression on the same layer at 20 and 60 training images, labelled
    as featpipe labels a size of a sweep."""
    rows = []
    for size in (20, 60):
        for head, name in (("knn", "kNN"), ("logreg", "logistic regression")):
            row = make_row(f"toy/{head}@pooled#n={size}", head=head, acc=0.7)
            row["label"] = f"{name} on layer pooled, {size} train images"
            row["train_size"] = size
            rows.append(row)
    return summarize(rows)


@pytest.fixture
def drawn(monkeypatch):
    """The training-size plot's figure, kept instead of rendered to PNG."""
    figures = []
    monkeypatch.setattr(plots, "_png", lambda fig: figures.append(fig) or b"")
    plots.accuracy_by_train_size(_sweep())
    (fig,) = figures
    return fig.axes[0]


def test_train_size_legend_names_methods_as_the_tables_do(drawn):
    legend = [t.get_text() for t in drawn.get_legend().get_texts()]
    assert sorted(legend) == ["kNN on layer pooled", "logistic regression on layer pooled"]


def test_methods_at_one_training_size_draw_their_error_bars_apart(drawn):
    points = [line.get_xdata() for line in drawn.get_lines() if line.get_label()[0] != "_"]
    bars = [np.array([seg[0, 0] for seg in c.lines[2][0].get_segments()]) for c in drawn.containers]
    assert len(points) == len(bars) == 2
    for x, at in zip(points, bars, strict=True):
        np.testing.assert_allclose(at, x)  # each bar on its own point
        # each point nearer its own size than the other size (log x), and near it
        assert np.all(np.abs(np.log10(np.asarray(x) / [20, 60])) < 0.1)
    assert np.all(np.abs(points[0] - points[1]) > 0.02 * np.asarray([20, 60]))
    assert [t.get_text() for t in drawn.get_xticklabels()] == ["20", "60"]
    np.testing.assert_allclose(drawn.get_xticks(), [20, 60])
