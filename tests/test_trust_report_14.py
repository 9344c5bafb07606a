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
