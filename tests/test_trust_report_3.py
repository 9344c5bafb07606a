"""Reports of awkward names and numbers: names starting with "_", methods measured at 0 s,
intervals that miss their point, very long names, many heads, a single method, and
right-to-left names beside numbers."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from test_report import make_row
from test_report_browser import Browser, find_browser
from test_trust_report_render import _captured

from featpipe.report import plots, write_report
from featpipe.report.content import Document, Section, Table
from featpipe.report.html import render_html
from featpipe.report.markdown import render_markdown
from featpipe.report.summary import MethodSummary, summarize


def _legend(ax) -> list[str]:
    legend = ax.get_legend()
    return [t.get_text() for t in legend.get_texts()] if legend else []


# Epoch 0 (before training) logs no train_accuracy, as FineTuner's history does.
HISTORY = [
    {"epoch": 0, "train_loss": None, "world_size": 1, "val_loss": 1.5, "val_accuracy": 0.3},
    *(
        {"epoch": e, "train_loss": 1 / e, "train_accuracy": e / 3, "val_loss": 1.2 / e}
        | {"world_size": 1, "val_accuracy": e / 4}
        for e in (1, 2)
    ),
]


def test_names_starting_with_an_underscore_are_in_every_legend(monkeypatch):
    # matplotlib's legend() leaves out labels starting with "_": the layer plot had an empty
    # legend, the sweep plot lost the probes, the curves lost "_loss".
    figures = _captured(monkeypatch)
    history = [{**h, "_loss": h["val_loss"]} for h in HISTORY]
    rows = [
        make_row("_base/_lr@_l1", layer="_l1", head="_lr"),
        make_row("_base/_lr@_l2", layer="_l2", head="_lr"),
        make_row("_base/ft", "finetune", mode="_m", history=history),
    ]
    for row in rows:
        row.update(backbone="_base", label="_" + row["method"])
    swept = [
        {**row, "method": f"{row['method']}#{n}", "train_size": n} for row in rows for n in (10, 20)
    ]
    plots.accuracy_by_layer(summarize(rows))
    plots.finetune_curves(summarize(rows))
    plots.accuracy_by_train_size(summarize(swept))
    layer, curves, sweep = (fig.axes[0] for fig in figures)
    assert _legend(layer) == ["_base / _lr"]
    assert set(_legend(curves)) == {"train_loss", "val_loss", "_loss", "val_accuracy"} | {
        "train_accuracy"
    }
    assert _legend(sweep) == ["__base/_lr@_l1", "__base/_lr@_l2", "__base/ft"]  # their labels


def test_the_curves_show_train_accuracy_missing_from_epoch_0(monkeypatch):
    # Keys were read from epoch 0 alone, which logs no train_accuracy: a real fine-tune's
    # plot never showed it.
    figures = _captured(monkeypatch)
    plots.finetune_curves(summarize([make_row("ft", "finetune", mode="full", history=HISTORY)]))
    ax, right = figures[0].axes
    assert "train_accuracy" in _legend(ax)
    (line,) = [line for line in right.get_lines() if line.get_label() == "train_accuracy"]
    assert np.allclose(line.get_ydata(), [np.nan, 100 / 3, 200 / 3], equal_nan=True)


def _zero_cost(row: dict) -> dict:
    row["cost"].update(extraction_seconds=0.0, fit_seconds=0.0, predict_seconds=0.0)
    row["cost"]["total_seconds"] = 0.0
    return row


def test_methods_measured_at_0_seconds_are_in_the_cost_plot(monkeypatch):
    # A log axis has no 0: methods whose cost was 0 s were left out of the plot.
    figures = _captured(monkeypatch)
    rows = [
        make_row("a", acc=0.7),  # 4.1 s
        make_row("b", acc=0.8, fit_seconds=20),  # 23.1 s
        _zero_cost(make_row("free", acc=0.6)),
        _zero_cost(make_row("tuned", "finetune", acc=0.5, mode="full")),
    ]
    plots.accuracy_vs_cost(summarize(rows))
    ax = figures[0].axes[0]
    points = {(x, round(y, 6)): c for c in ax.collections for x, y in np.asarray(c.get_offsets())}
    assert len(points) == 4
    top1 = {s.label: round(100 * s.top1, 6) for s in summarize(rows)}
    # The others where they were; the 0 s ones at half the cheapest cost, hollow.
    assert {(4.1, top1["a"]), (23.1, top1["b"])} < set(points)
    zero = [points.pop((2.05, top1[name])) for name in ("free", "tuned")]
    assert all(len(c.get_facecolor()) == 0 for c in zero)
    assert all(len(c.get_facecolor()) for c in points.values())
    assert _legend(ax) == [
        "probe",
        "probe, measured 0 s (drawn at 2 s)",
        "finetune, measured 0 s (drawn at 2 s)",
    ]
    assert "free" in [t.get_text() for t in ax.texts]  # cheapest: on the frontier
    assert ax.get_xlim()[0] > 1.5  # the axis goes no further left than it must


def test_a_cost_plot_where_every_method_took_0_seconds(monkeypatch):
    figures = _captured(monkeypatch)
    plots.accuracy_vs_cost(summarize([_zero_cost(make_row("only"))]))
    ax = figures[0].axes[0]
    assert [c.get_offsets()[0, 0] for c in ax.collections] == [1.0]
    assert _legend(ax) == ["probe, measured 0 s (drawn at 1 s)"]


def _bars(ax) -> list[tuple[float, float]]:
    """(low, high) end of each error bar, along the bar."""
    (bars,) = [c for c in ax.collections if c.get_segments()]
    return sorted(
        tuple(sorted(seg[:, 0 if np.ptp(seg[:, 0]) else 1])) for seg in bars.get_segments()
    )


def _with_ci(row: dict, ci: list[float]) -> dict:
    row["metrics"]["ci"]["top1"] = ci
    return row


def _stored_intervals(monkeypatch) -> None:
    """Plot the top-1 intervals the rows hold: the report recomputes Wilson intervals from
    the counts, which always hold their point; these tests draw any interval."""
    stored = property(lambda s: tuple(s.rows[0]["metrics"]["ci"]["top1"]))
    monkeypatch.setattr(MethodSummary, "top1_ci", stored)


def test_intervals_that_miss_their_point_are_drawn_where_they_are(monkeypatch):
    # A percentile interval from few resamples can lie wholly above or below its point: the
    # sweep plot raised ValueError (negative error bar), the method plot drew the bar from
    # the point instead of from the interval's low end.
    figures = _captured(monkeypatch)
    _stored_intervals(monkeypatch)
    rows = [_with_ci(make_row(f"p{n}"), [0.9, 0.95]) for n in (10, 20)]
    for n, row in zip((10, 20), rows, strict=True):
        row["train_size"] = n
    plots.accuracy_by_method(summarize(rows[:1]))
    plots.accuracy_by_train_size(summarize(rows))
    by_method, sweep = (fig.axes[0] for fig in figures)
    assert np.allclose(_bars(by_method), [(90, 95)])
    assert np.allclose(_bars(sweep), [(90, 95), (90, 95)])


def test_a_wide_interval_is_not_cut_off_by_the_axis(monkeypatch):
    figures = _captured(monkeypatch)
    _stored_intervals(monkeypatch)
    rows = [_with_ci(make_row("a", acc=0.8), [0.3, 0.95]), make_row("b", acc=0.9)]
    plots.accuracy_by_method(summarize(rows))
    ax = figures[0].axes[0]
    assert ax.get_xlim()[0] <= 30


def test_a_report_of_one_method_with_one_class_of_results(tmp_path):
    written = write_report(tmp_path, [make_row("only")])
    assert {"accuracy_by_method", "accuracy_vs_cost"} <= set(written)
    assert written["accuracy_vs_cost"].read_bytes()[:4] == b"\x89PNG"


# Right-to-left names in sentences and cells shaped as the report writes them: a name then
# its number in brackets (advice's ties, the data checks' small classes, the processes note),
# a name then a number (the sweep crossover), a number list in a cell.
HEBREW, ARABIC = ("חתול", "כלב", "שלום עולם"), ("قطة", "كلب", "ذئب رمادي")
SENTENCES = [
    "Too few images for their per-class accuracy to mean much: {0} (2), {1} (3), {2} (4).",
    "From 100 images, {0} 91.0 % against {1} 80.0 % on validation; {2} 70.0 %.",
]


def _document(names: tuple[str, ...]) -> Document:
    texts = [s.format(*names) for s in SENTENCES]
    table = Table(["class", "note"], [[n, f"{n} (7)"] for n in names])
    return Document("bidi", [Section("text", [*texts, texts, table])])


# For every element: where (left edge, px) each name and each number is drawn.
POSITIONS = """(() => {
  const out = [];
  for (const el of document.querySelectorAll("p, li, td")) {
    const nodes = [], walk = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
    let text = "";
    while (walk.nextNode()) { nodes.push([walk.currentNode, text.length]);
      text += walk.currentNode.data; }
    const at = (i) => { const [n, s] = nodes.filter(([, s]) => s <= i).pop();
      return [n, i - s]; };
    const left = (word) => {
      const i = text.indexOf(word), r = document.createRange();
      const [node, offset] = at(i + word.length - 1);
      r.setStart(...at(i));
      r.setEnd(node, offset + 1);
      return Math.min(...[...r.getClientRects()].map((b) => b.left));
    };
    const words = WORDS.filter((w) => text.includes(w));
    out.push({text, left: Object.fromEntries(words.map((w) => [w, left(w)]))});
  }
  return out;
})()"""


def _positions(exe: str, pages: dict[str, str], words: list[str], tmp_path) -> dict:
    """Each page (HTML) opened in Chromium: per element, its text and each word's left edge."""
    browser = Browser(exe, tmp_path / "profile")
    out = {}
    try:
        browser.page("Page.enable")
        browser.page("Page.setLifecycleEventsEnabled", enabled=True)
        for name, page in pages.items():
            path = tmp_path / f"{name}.html"
            path.write_text(page, encoding="utf-8")
            navigation = browser.page("Page.navigate", url=path.as_uri())
            browser.wait_for("Page.lifecycleEvent", name="load", loaderId=navigation["loaderId"])
            script = POSITIONS.replace("WORDS", repr(words))
            result = browser.page("Runtime.evaluate", expression=script, returnByValue=True)
            out[name] = result["result"]["value"]
    finally:
        browser.close()
    return out


@pytest.mark.parametrize("names", [HEBREW, ARABIC], ids=["hebrew", "arabic"])
def test_right_to_left_names_leave_the_numbers_after_them_in_place(tmp_path, names):
    # Without isolation "A (2), B (3)" with Hebrew names A, B was drawn as "3) B ,(2) A)":
    # the numbers on the far side of the names, each count by the other class.
    exe = find_browser()
    if exe is None:
        pytest.skip("no Chromium on PATH; `.ci/run` installs it")
    markdown_it = pytest.importorskip("markdown_it")
    doc = _document(names)
    md = markdown_it.MarkdownIt("commonmark").enable("table").render(render_markdown(doc))
    pages = {"html": render_html(doc), "md": f'<html lang="en"><meta charset="utf-8">{md}</html>'}
    numbers = ["(2)", "(3)", "(4)", "91.0", "80.0", "70.0", "(7)"]
    words = names[2].split()  # a name of two words
    seen = _positions(exe, pages, [*names, *numbers, *words], tmp_path)
    for page, elements in seen.items():
        assert len(elements) == 4 + 2 * len(names), page  # p, p, li, li, cells
        for element in elements:
            left = element["left"]
            shown = [(x, w) for w, x in left.items() if w not in words]
            written = sorted(shown, key=lambda xw: element["text"].index(xw[1]))
            # Left to right as written: each name, then its number.
            assert sorted(shown) == written, (page, element["text"])
            if names[2] in left:  # and the words of a name right to left
                assert left[words[1]] < left[words[0]], (page, element["text"])


def test_a_very_long_name_does_not_widen_the_plots(monkeypatch):
    # A 320-character label made the method plot 2,903 px wide (report.html shows it at 40 %
    # of its size) and the cost plot 2,021 px; the tables show the name whole.
    figures = _captured(monkeypatch)
    rows = [make_row("a", acc=0.7), make_row("b", acc=0.8, fit_seconds=20)]
    rows[0]["label"] = "long" * 75 + " on layer blocks.6"
    summaries = summarize(rows)
    for plot in (plots.accuracy_by_method, plots.accuracy_vs_cost):
        assert Image.open(io.BytesIO(plot(summaries))).width <= 1100, plot.__name__
    ticks = [t.get_text() for t in figures[0].axes[0].get_yticklabels()]
    assert any(t.startswith("longlong") and t.endswith("on layer blocks.6") for t in ticks)


def test_a_layer_plot_of_many_heads_gives_each_its_own_colour(monkeypatch):
    # Past ten heads the default colour cycle repeated: two lines, same colour and marker.
    figures = _captured(monkeypatch)
    rows = [make_row(f"m{i}@{x}", head=f"h{i}", layer=x) for i in range(12) for x in ("a", "b")]
    plots.accuracy_by_layer(summarize(rows))
    colours = [line.get_color() for line in figures[0].axes[0].get_lines()]
    assert len(colours) == 12 and len(set(map(str, colours))) == 12


def test_the_method_plot_says_which_colour_is_which_kind(monkeypatch):
    # Probes and fine-tunes were told apart by colour alone, with no legend saying which.
    figures = _captured(monkeypatch)
    rows = [make_row("a", acc=0.7), make_row("tuned", "finetune", acc=0.5, mode="full")]
    plots.accuracy_by_method(summarize(rows))
    assert _legend(figures[0].axes[0]) == ["probe", "finetune"]
    plots.accuracy_by_method(summarize(rows[:1]))
    assert _legend(figures[1].axes[0]) == ["probe"]
