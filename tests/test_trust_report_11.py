"""Round 11 checks of report/: the confusion-matrix figure leaves out classes without test
images as the per-class table does, and the per-class table shows the mean over seeds."""

from __future__ import annotations

import numpy as np
from test_report import make_row
from test_trust_evaluate_11 import _gappy_row

from featpipe.report import content
from featpipe.report.content import build_document
from featpipe.report.markdown import render_markdown


def _figures(monkeypatch) -> list[tuple[list, list]]:
    """Capture what each confusion figure is drawn from: (matrix, classes)."""
    drawn: list[tuple[list, list]] = []
    monkeypatch.setattr(
        content.plots,
        "confusion",
        lambda matrix, classes, title: drawn.append((np.asarray(matrix).tolist(), classes)) or b"",
    )
    return drawn


def test_the_confusion_figure_leaves_out_classes_without_test_images(monkeypatch):
    # Labels 0, 5 and 9 of classes '0'..'9': the figure drew 10 rows, 7 of them empty.
    drawn = _figures(monkeypatch)
    rows = [_gappy_row("toy/logreg@pooled", 0.8), _gappy_row("toy/finetune:full", 0.9, "finetune")]
    md = render_markdown(build_document(rows, n_boot=40))
    assert len(drawn) == 2
    for (matrix, classes), row in zip(drawn, rows, strict=True):
        assert classes == ["0", "5", "9"]
        full = np.asarray(row["metrics"]["confusion"])
        assert matrix == full[np.ix_([0, 5, 9], [0, 5, 9])].tolist()
    for label in ("toy/logreg@pooled", "toy/finetune:full"):
        assert f"{label} (seed 0; classes without test images left out)." in md


def test_a_predicted_class_without_test_images_stays_in_the_figure(monkeypatch):
    # A head may predict a class with no test images: dropping its column would lose those
    # predictions from the rows of the classes they belong to.
    drawn = _figures(monkeypatch)
    row = _gappy_row("toy/logreg@pooled", 0.8)
    y = np.asarray(row["test"]["y_true"])
    cm = np.zeros((10, 10), int)
    np.add.at(cm, (y, np.where(np.arange(120) < 4, 3, y)), 1)  # 4 images predicted as '3'
    row["metrics"]["confusion"] = cm.tolist()
    md = render_markdown(build_document([row], n_boot=40))
    matrix, classes = drawn[0]
    assert classes == ["0", "3", "5", "9"]
    assert np.asarray(matrix).sum() == 120
    assert "classes without test images left out unless predicted" in md


def test_the_figure_is_unchanged_when_every_class_has_test_images(monkeypatch):
    drawn = _figures(monkeypatch)
    row = make_row("toy/logreg@pooled")
    md = render_markdown(build_document([row], n_boot=40))
    assert drawn == [(row["metrics"]["confusion"], row["classes"])]
    assert "by validation accuracy: toy/logreg@pooled (seed 0)." in md


def _per_class(md: str) -> dict[str, str]:
    table = md[md.index("Per-class accuracy") :]
    table = table[: table.index("\n\n", table.index("|"))]
    return {
        cells[1].strip(): cells[2].strip()
        for cells in (line.split("|") for line in table.splitlines()[4:])
    }


def test_the_per_class_table_shows_the_mean_over_seeds():
    # It showed seed 0's per-class accuracy beside a results table of the mean over seeds.
    rows = [make_row("toy/logreg@pooled", acc=a, seed=s) for s, a in [(0, 0.9), (1, 0.5)]]
    md = render_markdown(build_document(rows, n_boot=40))
    assert "Per-class accuracy (%) on test, the mean over seeds, of the methods" in md
    expected = {
        name: f"{100 * np.mean([r['metrics']['per_class_accuracy'][name] for r in rows]):.1f}"
        for name in rows[0]["classes"]
    }
    first = {k: f"{100 * v:.1f}" for k, v in rows[0]["metrics"]["per_class_accuracy"].items()}
    assert expected != first  # the seeds differ, so the test tells a mean from seed 0
    assert _per_class(md) == expected
    # The confusion matrix stays seed 0's, and says so.
    assert "toy/logreg@pooled (seed 0)." in md
