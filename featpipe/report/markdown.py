"""Render a report document as Markdown, with figures linked as PNG files under ``plots/``."""

from __future__ import annotations

from featpipe.report.content import Document, Figure, Table

PLOTS_DIR = "plots"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(table: Table) -> list[str]:
    lines = [
        "| " + " | ".join(_cell(h) for h in table.header) + " |",
        "|" + "---|" * len(table.header),
    ]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in table.rows]
    return lines


def render_markdown(doc: Document) -> str:
    """The report as Markdown; figures point at ``plots/<name>.png`` beside report.md."""
    lines = [f"# {doc.title}", ""]
    for section in doc.sections:
        title = f"Appendix: {section.title}" if section.appendix else section.title
        lines += [f"## {title}", ""]
        for block in section.blocks:
            if isinstance(block, Table):
                lines += _table(block)
            elif isinstance(block, Figure):
                lines.append(f"![{block.caption}]({PLOTS_DIR}/{block.name}.png)")
                lines.append(f"*{block.caption}*")
            elif isinstance(block, list):
                lines += [f"- {item}" for item in block]
            else:
                lines.append(block)
            lines.append("")
    return "\n".join(lines)
