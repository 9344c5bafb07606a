"""Render a report document as one self-contained HTML file (figures inline as base64 PNG)."""

from __future__ import annotations

import base64
import re
from html import escape

from featpipe.report.content import RTL_RUN, Document, Figure, Folded, Table, plain

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
.table { overflow-x: auto; margin: 0.5em 0; }
table { border-collapse: collapse; font-size: 0.8em; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1em 0; } figcaption { font-size: 0.85em; color: #555; }
img { max-width: 100%; }
p, li, figcaption, h1, h2 { overflow-wrap: anywhere; } /* a long name with no spaces wraps */
td details summary { cursor: pointer; } details > summary h2 { display: inline; }
"""


# Long names and parameter lists ("blocks.5:avg+blocks.6:avg", "hidden_layer_sizes=[512, 256]")
# have no spaces to wrap at, and would widen the table past 1,280 px; they may break after these.
_BREAK_AFTER = re.compile(r"([+=,])(?=\S)")


def _attr(text: object) -> str:
    """``text`` as an attribute value or title, quotes included (class names, labels and run
    names come from users' data: a class folder named ``<img src=x onerror=…>`` must stay
    text)."""
    return escape(plain(text))


def _text(text: object) -> str:
    """``text`` as HTML text (``_attr``), each right-to-left run in its own ``<bdi>``, so that
    the numbers and brackets after a Hebrew or Arabic name stay where they are written."""
    pieces = RTL_RUN.split(plain(text))  # runs at odd places
    return "".join(f"<bdi>{escape(p)}</bdi>" if i % 2 else escape(p) for i, p in enumerate(pieces))


def _cell(text: object) -> str:
    if isinstance(text, Folded):  # the short form, unfolding to the whole on a click
        return f"<details><summary>{_cell(text.short)}</summary>{_cell(text.full)}</details>"
    return _BREAK_AFTER.sub(r"\1<wbr>", _text(text))


def _table(table: Table) -> str:
    """A table in a box that scrolls sideways, should one still be wider than the page."""
    head = "".join(f"<th>{_cell(h)}</th>" for h in table.header)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>" for row in table.rows
    )
    table_ = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f'<div class="table">{table_}</div>'


def _figure(fig: Figure) -> str:
    data = base64.b64encode(fig.png).decode("ascii")
    return (
        f'<figure><img alt="{_attr(fig.caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{_text(fig.caption)}</figcaption></figure>"
    )


def render_html(doc: Document) -> str:
    """The report as a single HTML page that needs no other file."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_attr(doc.title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{_text(doc.title)}</h1>",
    ]
    for section in doc.sections:
        if section.appendix:  # folded: a click opens it
            parts.append(f"<details><summary><h2>{_text(section.title)}</h2></summary>")
        else:
            parts.append(f"<h2>{_text(section.title)}</h2>")
        for block in section.blocks:
            if isinstance(block, Table):
                parts.append(_table(block))
            elif isinstance(block, Figure):
                parts.append(_figure(block))
            elif isinstance(block, list):
                parts.append("<ul>" + "".join(f"<li>{_text(i)}</li>" for i in block) + "</ul>")
            else:
                parts.append(f"<p>{_text(block)}</p>")
        if section.appendix:
            parts.append("</details>")
    parts.append("</body></html>")
    return "\n".join(parts)
