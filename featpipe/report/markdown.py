"""Render a report document as Markdown, with figures linked as PNG files under ``plots/``."""

from __future__ import annotations

import re

from featpipe.report.content import RTL_RUN, Document, Figure, Table, plain

PLOTS_DIR = "plots"

# What Markdown reads as markup anywhere in a line: escapes, code spans, emphasis (and ``_``
# not inside a word), strikethrough, GitHub's math, raw HTML and autolinks, entities, links
# and images, table cells.
_INLINE = re.compile(r"[\\`*~$<|]|(?<![^\W_])_|_(?![^\W_])|&(?=#?\w+;)|\](?=[(\[])")
# What it reads as markup at the start of a line: headings, quotes, lists, rules, task boxes.
_LINE_START = re.compile(r"^([#>+\-=\[])|^(\d+)([.)])")
# Inside an image's alt text, a [ or ] alone ends it too.
_ALT = re.compile(_INLINE.pattern + r"|[\[\]]")

# A command line the report tells the reader to run, as it writes it: kept a code span.
_COMMAND = re.compile(r"(`featpipe [^`|\\]*`)")

_LRM = "\u200e"  # ends a right-to-left run in report.md, which has no <bdi>


def _text(text: object, pattern: re.Pattern = _INLINE) -> str:
    """``text`` as Markdown that shows it as it is, on one line: class names, labels and run
    names come from users' data, and a class folder named ``<img src=x onerror=…>`` or
    ``a|b`` must neither become HTML nor break a table."""
    line = " ".join(plain(text).splitlines())
    line = RTL_RUN.sub(lambda m: m[0] + _LRM if m.end() < len(line) else m[0], line)
    # A command the report names (`featpipe check STORE`) stays a code span: escaped, its
    # backticks showed as they are; a code span's text is shown as it is, never as markup.
    parts = _COMMAND.split(line)
    parts[::2] = [pattern.sub(r"\\\g<0>", part) for part in parts[::2]]
    return "".join(parts)


def _block(text: object) -> str:
    """A paragraph or list item: ``_text``, and no heading or list where the text begins."""
    return _LINE_START.sub(lambda m: f"\\{m[1]}" if m[1] else f"{m[2]}\\{m[3]}", _text(text))


def _table(table: Table) -> list[str]:
    lines = [
        "| " + " | ".join(_text(h) for h in table.header) + " |",
        "|" + "---|" * len(table.header),
    ]
    lines += ["| " + " | ".join(_text(c) for c in row) + " |" for row in table.rows]
    return lines


def render_markdown(doc: Document) -> str:
    """The report as Markdown; figures point at ``plots/<name>.png`` beside report.md."""
    lines = [f"# {_text(doc.title)}", ""]
    for section in doc.sections:
        title = f"Appendix: {section.title}" if section.appendix else section.title
        lines += [f"## {_text(title)}", ""]
        for block in section.blocks:
            if isinstance(block, Table):
                lines += _table(block)
            elif isinstance(block, Figure):
                lines.append(f"![{_text(block.caption, _ALT)}]({PLOTS_DIR}/{block.name}.png)")
                lines.append(f"*{_text(block.caption)}*")
            elif isinstance(block, list):
                lines += [f"- {_block(item)}" for item in block]
            else:
                lines.append(_block(block))
            lines.append("")
    return "\n".join(lines)
