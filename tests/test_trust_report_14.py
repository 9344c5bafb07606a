"""Report trust checks, session 13 (round 4): figures against the tables they illustrate."""

from __future__ import annotations

import pytest
from test_report import make_row

from featpipe.report import plots
from featpipe.report.summary import summarize

# Two methods whose labels share their first and last 29 characters: cut in the middle to
# 60 characters, both were drawn as the same name.
_LABEL = (
    "logistic regression on layers stages.1:avg+stages.2:avg+stages.3:avg "
    "[timm:convnext_tiny.fb_in22k_ft_in1k]"
)
_LABELS = [_LABEL, _LABEL.replace("stages.2:avg", "stages.2:gem")]


@pytest.fixture
def drawn(monkeypatch):
    """The matplotlib figures the plots draw, before they become PNG bytes."""
    figures = []
    png = plots._png
    monkeypatch.setattr(plots, "_png", lambda fig: (figures.append(fig), png(fig))[1])
    return figures


def _summaries(labels):
    rows = [make_row(f"m{i}", acc=0.8 - 0.1 * i) for i in range(len(labels))]
    for row, label in zip(rows, labels, strict=True):
        row["label"] = label
    return summarize(rows)


def test_long_labels_alike_at_both_ends_are_drawn_as_different_names(drawn):
    plots.accuracy_by_method(_summaries(_LABELS))
    names = [t.get_text() for t in drawn[-1].axes[0].get_yticklabels()]
    assert len(set(names)) == 2
    assert all(len(n) <= 60 for n in names)
    assert any("stages.2:gem" in n for n in names) and any("stages.2:avg" in n for n in names)


def test_long_class_names_alike_at_both_ends_are_drawn_as_different_names(drawn):
    plots.confusion([[1, 0], [0, 1]], _LABELS, "title")
    names = [t.get_text() for t in drawn[-1].axes[0].get_xticklabels()]
    assert len(set(names)) == 2


def test_names_that_differ_at_the_end_are_still_cut_in_the_middle(drawn):
    # guard: the usual cut is kept where it already tells names apart
    labels = [_LABEL + " A", _LABEL + " B"]
    plots.accuracy_by_method(_summaries(labels))
    names = [t.get_text() for t in drawn[-1].axes[0].get_yticklabels()]
    assert sorted(names) == sorted(plots._short(n) for n in labels)


def _rows_without_intervals():
    """Rows of a run with n_boot 0: compute_metrics gives no interval, Wilson's included."""
    import numpy as np

    from featpipe.evaluate import compute_metrics

    rows = [make_row("toy/logreg@pooled", acc=0.8), make_row("toy/knn@pooled", acc=0.6)]
    for row in rows:
        y, pred = np.array(row["test"]["y_true"]), np.array(row["test"]["y_pred"])
        proba = np.full((len(y), len(row["classes"])), 0.04)
        proba[np.arange(len(y)), pred] = 0.8
        row["metrics"] = compute_metrics(y, proba, row["classes"], n_boot=0)
    return rows


def test_a_report_without_intervals_promises_none(drawn):
    # Before: the overview, the table's header, the caption and the plot's axis spoke of 95 %
    # Wilson intervals that were neither in the table nor drawn.
    from featpipe.report.content import build_document
    from featpipe.report.markdown import render_markdown

    md = render_markdown(build_document(_rows_without_intervals(), n_boot=0))
    assert "Wilson" not in md and "(95 % CI)" not in md
    assert "without intervals (n_boot is 0)" in md
    (bars,) = [f for f in drawn if f.axes[0].get_yticklabels()[0].get_text().startswith("toy/")]
    assert "CI" not in bars.axes[0].get_xlabel()


def test_a_report_with_intervals_still_names_them(drawn):
    # guard: the usual wording where the rows have intervals
    from featpipe.report.content import build_document
    from featpipe.report.markdown import render_markdown

    rows = [make_row("toy/logreg@pooled", acc=0.8), make_row("toy/knn@pooled", acc=0.6)]
    md = render_markdown(build_document(rows, n_boot=40))
    assert "with 95 % Wilson score intervals." in md and "| top-1 % (95 % CI) |" in md
    assert "with the 95 % Wilson score interval over the test images" in md


def _sized(method, layer, size, acc):
    row = make_row(f"{method}#n={size}", acc=acc, layer=layer)
    row["train_size"] = size
    row["label"] = f"{method}, {size} train images"
    return row


def test_the_layer_plot_of_a_sweep_shows_the_largest_size_whatever_the_row_order(drawn):
    # Before: each layer's point was the last row of the (backbone, head) in the file, so a
    # smaller size written after the largest one (a folder without plan.json, rows re-made)
    # was drawn, under a caption that named no size.
    from featpipe.report.content import build_document
    from featpipe.report.markdown import render_markdown
    from featpipe.report.summary import summarize

    rows = [
        _sized("toy/logreg@pooled", "pooled", 40, 0.9),
        _sized("toy/logreg@stage1", "stage1", 40, 0.7),
        _sized("toy/logreg@pooled", "pooled", 10, 0.5),
        _sized("toy/logreg@stage1", "stage1", 10, 0.3),
    ]
    md = render_markdown(build_document(rows, n_boot=40))
    (fig,) = [f for f in drawn if f.axes[0].get_xlabel() == "layer"]
    (line,) = fig.axes[0].get_lines()
    at_40 = {s.layer: 100 * s.top1 for s in summarize(rows) if s.train_size == 40}
    assert list(line.get_ydata()) == pytest.approx([at_40["pooled"], at_40["stage1"]])
    assert "Test top-1 by layer for each head, at 40 training images." in md


def test_fine_tunes_with_long_labels_alike_at_both_ends_get_different_titles(drawn):
    history = [{"epoch": 1, "train_loss": 1.0, "val_accuracy": 0.5}]
    rows = [make_row(f"t{i}", "finetune", mode="full", history=history) for i in range(2)]
    for row, label in zip(rows, _LABELS, strict=True):
        row["label"] = label
    plots.finetune_curves(summarize(rows))
    titles = [t for ax in drawn[-1].axes if (t := ax.get_title(loc="left"))]
    assert len(titles) == 2 and len(set(titles)) == 2


def test_the_cost_plots_legend_covers_no_point(drawn):
    # Before: the legend sat in the lower right, where the costliest and least accurate
    # method's point is (here b: 5.1 s, 48 %), and hid it.
    rows = [make_row("a", fit_seconds=0.0), make_row("b", acc=0.5, fit_seconds=2.0)]
    rows[0]["cost"].update(extraction_seconds=0.0, predict_seconds=0.0, total_seconds=0.0)
    plots.accuracy_vs_cost(summarize(rows))
    fig = drawn[-1]
    ax = fig.axes[0]
    box = ax.get_legend().get_window_extent(fig.canvas.get_renderer())
    for collection in ax.collections:
        for x, y in collection.get_offset_transform().transform(collection.get_offsets()):
            assert not box.contains(x, y)
