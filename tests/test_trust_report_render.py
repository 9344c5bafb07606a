"""Reports built from someone else's data: class names, labels and run names holding Markdown,
HTML or mathtext must show as the text they are, in report.md, report.html and the plots."""

from __future__ import annotations

import html
import itertools
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from conftest import record_calls
from test_report import make_row

from featpipe.evaluate import compute_metrics
from featpipe.report import plots, write_report

CLASSES = [
    "<img src=x onerror=alert(1)>",
    "a|b",
    "back\\|slash",
    "*star* and **bold**",
    "_under_",
    "`tick` and ``",
    "~~gone~~",
    "price $5 and $6",
    "two\nlines",
    "[link](javascript:alert(1))",
    "![img](http://example.com/x.png)",
    "&lt;b&gt; &amp;",
    "# heading",
    "1. listed",
    "蜜蜂",
    "שלום",
]
LABELS = [
    "<script>alert(1)</script> p1",
    "[x](http://e.com) *p2* a|b",
    "ft ](x) ] [ $x^$ `c`",
]


def evil_rows() -> list[dict]:
    """Two probes and a fine-tune over CLASSES, labelled with LABELS."""
    rows = []
    methods = [("p1", "probe", 0.8), ("p2", "probe", 0.6), ("ft", "finetune", 0.9)]
    for i, ((method, kind, acc), label) in enumerate(zip(methods, LABELS, strict=True)):
        row = make_row(method, kind, acc=acc, mode="full" if kind == "finetune" else None)
        n = len(row["test"]["y_true"])
        y = np.arange(n) % len(CLASSES)
        pred = np.where(np.random.default_rng(i).random(n) < acc, y, (y + 1) % len(CLASSES))
        proba = np.full((n, len(CLASSES)), 0.01)
        proba[np.arange(n), pred] = 0.9
        row.update(classes=CLASSES, label=label, run="run <b>one</b>\n# not a heading")
        row["metrics"] = compute_metrics(y, proba, CLASSES, n_boot=40, seed=0)
        row["test"].update(y_true=y.tolist(), y_pred=pred.tolist())
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    return write_report(tmp_path_factory.mktemp("evil"), evil_rows())


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())


def test_markdown_shows_names_as_text(written):
    markdown_it = pytest.importorskip("markdown_it")  # a CommonMark parser (rich brings it)
    md = written["report.md"].read_text()
    parser = markdown_it.MarkdownIt("commonmark").enable(["table", "strikethrough"])
    tokens = parser.parse(md)

    def cell_text(inline) -> str:
        return "".join(t.content for t in inline.children if t.type in ("text", "code_inline"))

    # The per-class table: one row per class, its first cell exactly the class name.
    first_cells = [
        cell_text(tokens[i + 1])
        for i, t in enumerate(tokens)
        if t.type == "td_open" and tokens[i - 1].type == "tr_open"
    ]
    for name in CLASSES:
        assert _one_line(name) in first_cells, name
    for label in LABELS:
        assert label in first_cells, label
    # One heading for the title, its text the run name on one line.
    (title,) = [tokens[i + 1] for i, t in enumerate(tokens) if t.tag == "h1" and t.nesting == 1]
    assert cell_text(title) == "featpipe report: run <b>one</b> # not a heading"
    page = parser.render(md)
    # No HTML from the names, no links; images only the plots, emphasis only their captions.
    assert not [t for t in parser.parse(md) if t.type == "html_block"]
    assert "<script" not in page and "<b>" not in page
    assert "<a " not in page and "<del>" not in page and "<strong>" not in page
    images = re.findall(r'<img src="([^"]*)"', page)
    assert images and all(src.startswith("plots/") for src in images)
    assert page.count("<img") == len(images)
    assert page.count("<em>") == len(images)  # the captions
    (alt,) = re.findall(r'<img src="plots/confusion_finetune.png" alt="([^"]*)"', page)
    assert LABELS[2] in html.unescape(alt)


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def test_html_holds_no_markup_from_names(written):
    parsed = _Tags()
    parsed.feed(written["report.html"].read_text())
    tags = {tag for tag, _ in parsed.tags}
    assert tags <= {
        *("html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "ul", "li"),
        *("div", "table", "thead", "tbody", "tr", "th", "td", "details", "summary", "wbr"),
        *("figure", "img", "figcaption", "bdi"),
    }
    for tag, attrs in parsed.tags:
        assert not [a for a in attrs if a.startswith("on")], (tag, attrs)
        if tag == "img":
            assert set(attrs) == {"alt", "src"} and attrs["src"].startswith("data:image/png")
    text = "".join(parsed.text)
    for name in CLASSES:
        assert name in text, name


def _captured(monkeypatch) -> list:
    """The matplotlib figures the plots draw, kept for a look at their artists."""
    return record_calls(monkeypatch, plots, "_png")


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


# Bidirectional overrides, embeddings and isolates: one in a name reorders the rest of its
# line, so "p2 beats p1 by 13.3 points" could show other digits.
BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


def test_bidi_controls_in_names_are_shown_not_obeyed(tmp_path):
    rows = evil_rows()
    rows[0]["label"] = "p1 \u202eevil"
    rows[1]["label"] = "p2 \u2067isolated"
    written = write_report(tmp_path, rows)
    for name in ("report.md", "report.html"):
        text = written[name].read_text()
        assert not set(BIDI) & set(text), name
        assert "p1 <U+202E>evil" in html.unescape(text).replace("\\", ""), name
