"""Benchmark reports: results.jsonl rows -> report.md (+ plots/*.png) and a self-contained
report.html."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from featpipe.atomic import write_bytes_atomic, write_text_atomic
from featpipe.errors import ConfigError
from featpipe.evaluate.leakage import (
    NEAR_REFERENCE,
    DataChecks,
    check_source,
    check_store,
    source_hashes,
)
from featpipe.evaluate.metrics import DEFAULT_BOOT, MIN_BOOT
from featpipe.report.content import Document, build_document
from featpipe.report.html import render_html
from featpipe.report.markdown import PLOTS_DIR, render_markdown
from featpipe.report.results import (
    RESULTS_FILE,
    SCHEMA_VERSION,
    MethodKind,
    ResultRow,
    ResultsFormatError,
    append_result,
    ids_sha256,
    read_results,
    validate_row,
    write_results,
)
from featpipe.report.runplan import (
    PLAN_FILE,
    PlannedRun,
    RunPlan,
    read_plan,
    store_at,
    write_plan,
)
from featpipe.store.lock import StoreLock
from featpipe.words import counted

# The files that show rows as a run's results (plots aside).
REPORT_MD, REPORT_HTML = "report.md", "report.html"

__all__ = [
    "PLAN_FILE",
    "REPORT_HTML",
    "REPORT_MD",
    "RESULTS_FILE",
    "SCHEMA_VERSION",
    "Document",
    "MethodKind",
    "PlannedRun",
    "ResultRow",
    "ResultsFormatError",
    "RunPlan",
    "append_result",
    "build_document",
    "check_run_folder",
    "data_checks",
    "ids_sha256",
    "read_plan",
    "read_results",
    "record_rows",
    "render_html",
    "render_markdown",
    "validate_row",
    "write_plan",
    "write_report",
    "write_results",
]


CHECKS_FILE = "checks.json"


def check_run_folder(run_dir: str | Path, *files: str) -> None:
    """Refuse a folder where a run folder holds one of its files (results, plan, checks,
    reports and ``files``), or a file where it holds its plots folder, before anything is
    computed or written: else an IsADirectoryError traceback, at the latest after every job."""
    run_dir = Path(run_dir)
    names = (RESULTS_FILE, PLAN_FILE, CHECKS_FILE, REPORT_MD, REPORT_HTML, *files)
    blocking = [(run_dir / n, "a folder", "file") for n in names if (run_dir / n).is_dir()]
    plots = run_dir / PLOTS_DIR
    if plots.exists() and not plots.is_dir():
        blocking.append((plots, "a file", "plots folder"))
    if blocking:
        path, kind, what = blocking[0]
        raise ConfigError(
            f"{path} is {kind}, where featpipe writes the run's {what} {path.name!r}. Move or "
            "rename it, or give another run folder (a pipeline's out; CLI: featpipe run --out)."
        )


def write_report(
    run_dir: str | Path,
    rows: list[dict] | None = None,
    plan: RunPlan | None = None,
    source=None,
) -> dict[str, Path]:
    """Write report.md, plots/*.png and report.html into ``run_dir`` from the rows of its
    current plan. ``rows`` default to run_dir/results.jsonl and ``plan`` to run_dir/plan.json;
    rows outside the plan (earlier configurations) are left out. A run folder without a plan
    (older featpipe) reports the latest row of every method and seed, with a note saying so.
    The data checks hash image contents when the run's ``source`` is given (saved in
    checks.json for later rebuilds), else compare the stored features of the run's store.
    Returns the paths written, by name."""
    run_dir = Path(run_dir)
    check_run_folder(run_dir)
    if rows is None:
        results = run_dir / RESULTS_FILE
        if not results.exists():
            raise ConfigError(
                f"No {RESULTS_FILE} in {run_dir}; pass a folder that holds one: the --out of "
                "`featpipe run`, or the --run-dir of `featpipe probe` or `featpipe finetune`."
            )
        rows = read_results(results)
    if plan is None:
        plan = read_plan(run_dir)
    rows, notes = _current(rows, plan)
    checks = data_checks(run_dir, rows, source, plan.source_fingerprint if plan else None)
    n_boot = plan.n_boot if plan else DEFAULT_BOOT
    if 0 < n_boot < MIN_BOOT:  # a run made before that floor: report it, at the floor
        notes.append(
            f"Note: this run's n_boot is {n_boot}, fewer resamples than a 95 % interval needs "
            f"({MIN_BOOT}): this report computes its intervals and comparisons with "
            f"{MIN_BOOT}. Set n_boot to {MIN_BOOT} or more, or 0, and run it again: its rows "
            "are reused, nothing is fitted again."
        )
        n_boot = MIN_BOOT
    run = plan.run if plan else None
    doc = build_document(rows, n_boot=n_boot, notes=notes, checks=checks, run=run)
    plots_dir = run_dir / PLOTS_DIR
    plots_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for fig in doc.figures():
        path = plots_dir / f"{fig.name}.png"
        write_bytes_atomic(path, fig.png)
        written[fig.name] = path
    written[REPORT_MD] = run_dir / REPORT_MD
    write_text_atomic(written[REPORT_MD], render_markdown(doc))
    written[REPORT_HTML] = run_dir / REPORT_HTML
    write_text_atomic(written[REPORT_HTML], render_html(doc))
    return written


def data_checks(
    run_dir: Path, rows: list[dict], source=None, fingerprint: str | None = None
) -> DataChecks | None:
    """The data checks of a run: computed with content and perceptual hashes when the source
    is at hand, else those saved by the run (checks.json) if they were made from the data of
    ``fingerprint`` (the plan's source fingerprint; None: any), else from the stored features
    of the probes' store; None when there is neither a source nor a store to check."""
    saved = run_dir / CHECKS_FILE
    recorded = {
        (store.get("path"), store.get("key")): None
        for r in rows
        if r["kind"] == "probe" and (store := r["provenance"].get("store"))
    }
    stores = [s for s in (store_at(*pair) for pair in recorded) if s is not None]
    store = next((s for s in stores if "pooled" in s.layers), stores[0] if stores else None)
    if source is not None:
        hashes, image_hashes = source_hashes(source)
        if store is not None and all(i in hashes for i in store.ids()):
            checks = check_store(store, hashes, image_hashes=image_hashes)
        else:  # no store (fine-tunes only): no feature cosines
            checks = check_source(source, hashes, image_hashes)
    elif (kept := _saved_checks(saved, fingerprint, recheck=store is not None)) is not None:
        return kept
    elif store is not None:
        checks = check_store(store)
    else:
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    data = {**checks.to_json(), "source_fingerprint": fingerprint}
    write_text_atomic(saved, json.dumps(data) + "\n")
    return checks


def _saved_checks(saved: Path, fingerprint: str | None, recheck: bool) -> DataChecks | None:
    """The checks in checks.json, if they checked the data of ``fingerprint`` (a re-run on
    other data that stopped before its report must not show the earlier data's checks). None
    for a damaged file, and, when ``recheck`` can redo them, for checks an older featpipe made
    with less (near-duplicates in train only)."""
    try:
        data = json.loads(saved.read_text(encoding="utf-8"))
        made_from = data.pop("source_fingerprint", None)
        checks = DataChecks.from_json(data)
    except (OSError, ValueError, TypeError, AttributeError):  # missing, cut short, not ours
        return None
    if fingerprint is not None and made_from is not None and made_from != fingerprint:
        return None
    if recheck and checks.near_reference != list(NEAR_REFERENCE):
        return None
    return checks


def record_rows(run_dir: str | Path, rows: list[ResultRow], *, n_boot: int = DEFAULT_BOOT) -> Path:
    """Append ``rows`` to ``run_dir``/results.jsonl and put them in the folder's plan in place
    of earlier rows of the same method and seed, so that ``featpipe report run_dir`` shows the
    latest of each (how `featpipe probe` and `featpipe finetune` record their results)."""
    run_dir = Path(run_dir)
    # The run folder's lock, as `featpipe run` holds it: a run writing this folder meanwhile
    # would otherwise replace plan.json without these rows.
    with StoreLock(run_dir / RESULTS_FILE):
        plan = read_plan(run_dir) or RunPlan(rows[0].run if rows else run_dir.name, [], n_boot)
        new = [PlannedRun(r.method, r.seed, r.config_hash, r.label, r.deterministic) for r in rows]
        replaced = {(m.method, m.seed) for m in new}
        kept = [m for m in plan.methods if (m.method, m.seed) not in replaced]
        for row in rows:
            append_result(run_dir / RESULTS_FILE, row)
        write_plan(run_dir, replace(plan, methods=kept + new))
    return run_dir / RESULTS_FILE


def _current(rows: list[dict], plan: RunPlan | None) -> tuple[list[dict], list[str]]:
    """The rows a report uses, and the notes that say what it left out."""
    if plan is None:
        return rows, [
            f"Note: this run folder has no {PLAN_FILE} (a run by an older featpipe), so this "
            f"report shows the latest row of every method and seed in {RESULTS_FILE}, which "
            "may mix configurations. Run the pipeline again to report only the rows of its "
            "current configuration."
        ]
    current, missing, history = plan.select(rows)
    notes = []
    if missing:
        runs = ", ".join(f"{m.label or m.method} (seed {m.seed})" for m in missing)
        verb = "has" if len(missing) == 1 else "have"
        notes.append(
            f"Note: {len(missing)} of {counted(len(plan.methods), 'method run')} of the "
            f"current configuration {verb} no result yet: {runs}. Run the same `featpipe run` "
            "command to finish them."
        )
    if history:
        notes.append(
            f"{RESULTS_FILE} also holds {counted(history, 'row')} of earlier configurations, "
            "kept as history and left out of this report."
        )
    return current, notes
