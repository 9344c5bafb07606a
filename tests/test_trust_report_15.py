"""Report trust checks, session 14: figures read as the tables do."""

from __future__ import annotations

from test_report import HISTORY, make_row
from test_trust_report_14 import drawn  # noqa: F401  (fixture)

from featpipe.report import plots
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
