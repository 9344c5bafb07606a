"""Report trust checks, session 14: figures read as the tables do."""

from __future__ import annotations

from test_report import HISTORY, make_row
from test_trust_report_14 import drawn  # noqa: F401  (fixture)

from featpipe.report import plots
from featpipe.report.advice import warnings_for
from featpipe.report.content import build_document
from featpipe.report.markdown import render_markdown
from featpipe.report.summary import summarize


def test_the_method_plots_legend_covers_no_bar_when_every_bar_is_near_100(drawn):  # noqa: F811
    # Before: the legend sat in the lower right, over the end of the lowest bar and its
    # interval when every method scored near 100 % (the axis ends at 100).
    rows = [
        make_row("a", acc=0.97),
        make_row("b", acc=0.99, head="knn"),
        make_row("c", "finetune", acc=1.0, mode="full"),
    ]
    plots.accuracy_by_method(summarize(rows))
    fig = drawn[-1]
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    box = ax.get_legend().get_window_extent(renderer)
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {"probe", "finetune"}
    for bar in ax.patches:
        assert not box.overlaps(bar.get_window_extent(renderer))
    for collection in ax.collections:  # the interval bars, from low end to high end
        for segment in collection.get_segments():
            for x, y in ax.transData.transform(segment):
                assert not box.contains(x, y)


def test_the_fine_tuning_curves_show_accuracy_in_percent(drawn):  # noqa: F811
    # Before: 0.6 and 0.8 on an axis labelled "accuracy", where every other figure and the
    # tables say 60 % and 80 %.
    plots.finetune_curves(summarize([make_row("t", "finetune", mode="full", history=HISTORY)]))
    ax, ax2 = drawn[-1].axes
    assert ax2.get_ylabel() == "accuracy (%)"
    (line,) = ax2.get_lines()
    assert list(line.get_ydata()) == [60.0, 80.0]
    assert [list(line.get_ydata()) for line in ax.get_lines()] == [[1.2, 0.7], [1.0, 0.8]]


def _mixed_seeds():
    """One method's seeds on 40 and 400 test images (two `featpipe probe` calls from two
    stores into one --run-dir: the method's name does not name the store)."""
    return [
        make_row("toy/logreg@pooled", acc=0.9, n=40, seed=0),
        make_row("toy/logreg@pooled", acc=0.6, n=400, seed=1),
        make_row("toy/knn@pooled", acc=0.7, head="knn", n=400, seed=1),
    ]


def test_a_method_whose_seeds_tested_different_images_is_warned():
    # Before: "toy/logreg@pooled | 0, 1 | 76.0 ± 23.3 (60.9–86.6)" with no word that its
    # seeds' accuracies came from different test sets.
    md = render_markdown(build_document(_mixed_seeds(), n_boot=100))
    warned = [line for line in md.splitlines() if "tested different test images" in line]
    assert len(warned) == 1, warned
    assert warned[0].startswith("- toy/logreg@pooled: its seeds tested different test images")
    assert "(seed 0: 40 images, seed 1: 400 images)" in warned[0]


def test_seeds_on_the_same_images_are_not_warned():
    # guard: the usual case, every seed on one store's test split
    rows = [make_row("m", acc=0.8, seed=0), make_row("m", acc=0.7, seed=1)]
    md = render_markdown(build_document(rows, n_boot=100))
    assert "tested different test images" not in md


def test_the_interval_of_seeds_on_different_sets_is_never_narrower_than_their_mean_needs():
    # The smallest set's Wilson interval at the mean covers the mean's normal interval.
    import numpy as np

    s = summarize(_mixed_seeds())[0]
    p = [r["metrics"]["top1"] for r in s.rows]
    n = [r["metrics"]["n"] for r in s.rows]
    se = np.sqrt(sum(pi * (1 - pi) / ni for pi, ni in zip(p, n, strict=True))) / len(p)
    lo, hi = s.top1_ci
    assert lo <= s.top1 - 1.96 * se and hi >= s.top1 + 1.96 * se


def test_provenance_has_no_line_for_an_item_a_row_does_not_have():
    # Before: a fine-tune's row (no store) added "store | null" under the probes' store,
    # and a `featpipe probe` row "image_size | null".
    from featpipe.report.summary import provenance

    probe, tune = make_row("p"), make_row("t", "finetune", mode="full")
    probe["provenance"]["store"] = {"path": "s.h5", "key": "k"}
    tune["provenance"]["store"] = None
    probe["provenance"]["image_size"], tune["provenance"]["image_size"] = None, 64
    lines = provenance([probe, tune])
    assert [v for k, v in lines if k == "store"] == ['{"key": "k", "path": "s.h5"}']
    assert [v for k, v in lines if k == "image_size"] == ["64"]
    assert all(v != "null" for _, v in lines)


def test_the_table_without_duplicates_names_one_seed_in_the_singular():
    # Before: "toy/logreg@pooled (seeds 0)" when only seed 0 tested the checked images.
    from test_trust_report_8 import _data_checks

    rows = [make_row("toy/logreg@pooled", n=120), make_row("toy/logreg@pooled", n=90, seed=1)]
    text = _data_checks(rows)
    assert "| toy/logreg@pooled (seed 0) |" in text and "(seeds 0)" not in text


def test_the_fine_tuning_curves_legend_covers_no_line(drawn):  # noqa: F811
    # Before: the legend sat at the center right, over the lines that end there (here
    # train_loss ends midway between the losses' extremes).
    import itertools

    import numpy as np

    history = [
        {"epoch": 1, "train_loss": 1.2, "val_loss": 1.0, "val_accuracy": 0.6},
        {"epoch": 2, "train_loss": 1.0, "val_loss": 0.9, "val_accuracy": 0.7},
        {"epoch": 3, "train_loss": 0.95, "val_loss": 0.7, "val_accuracy": 0.8},
    ]
    plots.finetune_curves(summarize([make_row("t", "finetune", mode="full", history=history)]))
    fig = drawn[-1]
    renderer = fig.canvas.get_renderer()
    box = fig.axes[0].get_legend().get_window_extent(renderer)
    for ax in fig.axes:
        for line in ax.get_lines():
            xy = ax.transData.transform(np.column_stack(line.get_data()))
            for a, b in itertools.pairwise(xy):  # points along each segment
                for t in np.linspace(0, 1, 50):
                    assert not box.contains(*(a + t * (b - a))), line.get_label()
    assert fig.axes[0].get_title(loc="left") == "t"  # left of the legend above the axes


def test_a_method_no_better_than_predicting_one_class_is_warned():
    # Before: a fine-tune at 10 % on 10 balanced classes (its log warned about its val
    # score) stood in the report without a word under "Warnings".
    good = make_row("toy/knn@pooled", acc=0.8, head="knn")
    stuck = make_row("toy/finetune:head", "finetune", mode="head")
    stuck["test"]["y_pred"] = [0] * len(stuck["test"]["y_true"])  # class 'a' for every image
    stuck["metrics"]["top1"] = 1 / 6  # make_row's 6 classes, equally many test images each
    lines = warnings_for(summarize([good, stuck]))
    assert [line.split(" scores")[0] for line in lines if "no better than" in line] == [
        "toy/finetune:head"
    ]
    assert "no better than predicting class 'a' for every test image (16.7 %)" in "".join(lines)
