"""Reports built from someone else's data: class names, labels and run names holding Markdown,
HTML or mathtext must show as the text they are, in report.md, report.html and the plots."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from featpipe.report import plots


def _captured(monkeypatch) -> list:
    figures = []
    real = plots._png

    def keep(fig):
        figures.append(fig)
        return real(fig)

    monkeypatch.setattr(plots, "_png", keep)
    return figures


def test_plots_draw_dollar_signs_as_text(monkeypatch):
    # "$x^$" is broken mathtext: matplotlib raised ValueError drawing it; "$5 and $" read as math.
    figures = _captured(monkeypatch)
    png = plots.confusion([[1, 0], [0, 1]], ["price $5 and $6", "$x^$"], "$\\foo$")
    assert png[:4] == b"\x89PNG"
    ax = figures[0].axes[0]
    texts = [t.get_text() for t in ax.get_xticklabels()] + [ax.get_title()]
    assert texts == ["price $5 and $6", "$x^$", "$\\foo$"]
    assert not [t for t in [*ax.get_xticklabels(), ax.title] if t._preprocess_math(t.get_text())[1]]


@pytest.mark.parametrize("n", [60, 300])
def test_confusion_tick_labels_do_not_overlap(monkeypatch, n):
    # 300 class names at 7 pt on a 10-inch axis were drawn over each other (a grey smear).
    figures = _captured(monkeypatch)
    classes = [f"class_{i:03d}" for i in range(n)]
    plots.confusion(np.eye(n, dtype=int).tolist(), classes, "many")
    ax = figures[0].axes[0]
    renderer = figures[0].canvas.get_renderer()
    for labels in (ax.get_yticklabels(), ax.get_xticklabels()):
        shown = [t for t in labels if t.get_visible() and t.get_text()]
        assert shown and all(t.get_text() in classes for t in shown)
        boxes = sorted((t.get_window_extent(renderer) for t in shown), key=lambda b: (b.y0, b.x0))
        for a, b in itertools.pairwise(boxes):
            assert not a.overlaps(b), (a, b)
