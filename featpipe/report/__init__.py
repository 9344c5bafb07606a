"""Benchmark reports: results.jsonl rows -> report.md (+ plots/*.png) and a self-contained
report.html."""

from __future__ import annotations

from pathlib import Path

from featpipe.errors import ConfigError
from featpipe.report.content import Document, build_document
from featpipe.report.html import render_html
from featpipe.report.markdown import PLOTS_DIR, render_markdown
from featpipe.report.results import (
    RESULTS_FILE,
    SCHEMA_VERSION,
    ResultsFormatError,
    append_result,
    ids_sha256,
    read_results,
    validate_row,
    write_results,
)

__all__ = [
    "RESULTS_FILE",
    "SCHEMA_VERSION",
    "Document",
    "ResultsFormatError",
    "append_result",
    "build_document",
    "ids_sha256",
    "read_results",
    "render_html",
    "render_markdown",
    "validate_row",
    "write_report",
    "write_results",
]


def write_report(run_dir: str | Path, rows: list[dict] | None = None) -> dict[str, Path]:
    """Write report.md, plots/*.png and report.html into ``run_dir`` from its results.jsonl
    (or from ``rows``). Returns the paths written, by name."""
    run_dir = Path(run_dir)
    if rows is None:
        results = run_dir / RESULTS_FILE
        if not results.exists():
            raise ConfigError(
                f"No {RESULTS_FILE} in {run_dir}; pass the folder a `featpipe run` wrote to."
            )
        rows = read_results(results)
    doc = build_document(rows)
    plots_dir = run_dir / PLOTS_DIR
    plots_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for fig in doc.figures():
        path = plots_dir / f"{fig.name}.png"
        path.write_bytes(fig.png)
        written[fig.name] = path
    written["report.md"] = run_dir / "report.md"
    written["report.md"].write_text(render_markdown(doc), encoding="utf-8")
    written["report.html"] = run_dir / "report.html"
    written["report.html"].write_text(render_html(doc), encoding="utf-8")
    return written
