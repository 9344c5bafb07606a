"""The report as format-neutral blocks (paragraphs, tables, lists, figures), rendered to Markdown
and HTML by ``markdown.py`` and ``html.py`` so that both always say the same thing."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from featpipe.evaluate.compare import bound_figure, point_decimals
from featpipe.evaluate.leakage import DataChecks
from featpipe.evaluate.metrics import DEFAULT_BOOT
from featpipe.report import advice, plots
from featpipe.report.results import MethodKind, ids_sha256
from featpipe.report.summary import (
    MethodSummary,
    all_pairs,
    best,
    clear_after_holm,
    comparisons,
    cost_devices,
    latest_rows,
    provenance,
    row_cost,
    summarize,
)
from featpipe.store.schema import count_not_finite, skipped_images
from featpipe.words import counted

# Unicode's bidirectional embeddings, overrides and isolates: one in a class name or label
# would reorder the rest of its line as shown (digits of the results included).
_BIDI_CONTROLS = re.compile("[\u202a-\u202e\u2066-\u2069]")

# A run of right-to-left text (Hebrew, Arabic, Syriac, Thaana, N'Ko, ... letters, with the
# spaces, digits and marks between them), such as a class name or label; list punctuation
# (commas, brackets, colons) ends a run. Numbers and brackets after a run would otherwise join
# it and show on its far side: in "A (2), B (3)" with Hebrew names A and B, the 2 is drawn
# between B and A and the 3 left of B. report.html isolates each run (<bdi>); report.md, which
# has no markup for it, ends a run followed by more text with a left-to-right mark.
_RTL = "\u0590-\u08ff\ufb1d-\ufdff\ufe70-\ufefe\U00010800-\U00010fff\U0001e800-\U0001efff"
RTL_RUN = re.compile(f"([{_RTL}](?:[{_RTL}\\s\\d.'\"_/-]*[{_RTL}])?)")  # split() keeps runs


def plain(text: object) -> str:
    """``text`` for a renderer to escape, with bidirectional controls shown as their code
    points (``<U+202E>``) instead of obeyed."""
    return _BIDI_CONTROLS.sub(lambda m: f"<U+{ord(m[0]):04X}>", str(text))


@dataclass(frozen=True)
class Folded:
    """A table cell too long to show whole: ``short`` always, ``full`` on demand (HTML
    ``<details>``; Markdown shows ``short`` and an ellipsis)."""

    short: str
    full: str

    def __str__(self) -> str:
        return f"{self.short}, …" if self.short else "…"


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str | Folded]]


@dataclass(frozen=True)
class Figure:
    name: str  # file stem under plots/
    caption: str
    png: bytes


@dataclass
class Section:
    title: str
    blocks: list[str | Table | Figure | list[str]] = field(default_factory=list)
    # Detail most readers skip: folded in HTML (<details>), an appendix at the end in Markdown.
    appendix: bool = False


@dataclass
class Document:
    title: str
    sections: list[Section]

    def figures(self) -> list[Figure]:
        return [b for s in self.sections for b in s.blocks if isinstance(b, Figure)]


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}"


def _num(x: float | None, digits: int = 2) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def _mib(x: float | None) -> str:
    return "" if x is None else f"{x / 2**20:.0f}"


_SEED_NOTES = (
    " Deterministic methods have no randomness (a head without a random state, chosen on a "
    'fixed validation split): they ran once, since seeds do not change them; "identical" '
    "marks seeds that gave the same predictions."
)


def _top1_cell(s: MethodSummary) -> str:
    agg = s.aggregate["top1"]
    text = f"{100 * agg['mean']:.1f}"
    if agg["n"] > 1 and s.seed_note is None:  # no "± 0.0" for seeds that changed nothing
        text += f" ± {100 * agg['std']:.1f}"
    if s.top1_ci:
        text += f" ({100 * s.top1_ci[0]:.1f}–{100 * s.top1_ci[1]:.1f})"
    return text


def _score_cell(s: MethodSummary, metric: str) -> str:
    text = _pct(_mean(s, metric))
    ci = s.score_ci(metric) if text else None
    return f"{text} ({100 * ci[0]:.1f}–{100 * ci[1]:.1f})" if ci else text


def _score_differences(scores: dict) -> str:
    """The paired differences (A minus B) in balanced accuracy and macro F1, e.g. "; difference
    in balanced accuracy +0.4 points (95 % CI -1.0 to 1.8), in macro F1 ..."."""
    parts = []
    named = (("balanced_accuracy", "balanced accuracy"), ("macro_f1", "macro F1"))
    for metric, name in (pair for pair in named if pair[0] in scores):
        diff, lo, hi = scores[metric]
        d = point_decimals(100 * diff)
        ci = (
            ""
            if lo is None
            else f" (95 % CI {bound_figure(100 * lo, d)} to {bound_figure(100 * hi, d)})"
        )
        parts.append(f"in {name} {100 * diff:+.{d}f} points{ci}")
    return "; difference " + ", ".join(parts) if parts else ""


def _seeds_cell(s: MethodSummary) -> str:
    seeds = ", ".join(map(str, s.seeds))
    return f"{seeds} ({s.seed_note})" if s.seed_note else seeds


def _mean(s: MethodSummary, metric: str) -> float | None:
    agg = s.aggregate.get(metric)
    return agg["mean"] if agg else None


# Row bookkeeping rather than choices: left out of the parameter cell.
_BOOKKEEPING = ("selection", "probabilistic", "hit_iteration_limit")
# Shown first when no search varied anything: the knobs people look for.
_KEY_PARAMS = (
    *("C", "alpha", "n_neighbors", "gamma", "hidden_layer_sizes", "max_iter"),
    *("lr", "weight_decay", "dropout", "loss", "epochs", "best_epoch"),
)
_SHOWN = 3


def _value(v: object, short: bool) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list) and short and len(v) > _SHOWN:
        return "[" + ", ".join(_value(x, short) for x in v[:_SHOWN]) + ", …]"
    if isinstance(v, list):
        return "[" + ", ".join(_value(x, short) for x in v) + "]"
    return v if isinstance(v, str) else json.dumps(v)


def _params(s: MethodSummary) -> str | Folded:
    """The chosen parameters, compactly: those its search varied (else the usual knobs)
    first, e.g. ``C=0.1``; the rest folded away."""
    params = {k: v for k, v in s.params.items() if k not in _BOOKKEEPING}
    curve = s.rows[0].get("curve") or []
    varied = [k for k in params if len({json.dumps(c["params"].get(k)) for c in curve}) > 1]
    first = varied or [k for k in _KEY_PARAMS if k in params]
    order = list(dict.fromkeys([*first[:_SHOWN], *params]))
    short = ", ".join(f"{k}={_value(params[k], True)}" for k in order[:_SHOWN])
    if len(order) <= _SHOWN and all(not isinstance(params[k], list) for k in order):
        return short
    return Folded(short, ", ".join(f"{k}={_value(params[k], False)}" for k in order))


def _results_table(summaries: list[MethodSummary]) -> Table:
    ci = " (95 % CI)" if _with_intervals(summaries) else ""
    header = [
        "method",
        "seeds",
        f"top-1 %{ci}",
        "top-5 %",
        f"balanced acc %{ci}",
        f"macro F1 %{ci}",
        "log loss",
        "ECE",
        "extraction s",
        "fit s",
        "predict s",
        "total s",
        "images/s",
        "peak host MiB (main process)",
        "peak device MiB",
        "trainable params",
        "chosen parameters",
    ]
    rows = []
    for s in summaries:
        trainable = s.cost("trainable_params")
        rows.append(
            [
                s.label,
                _seeds_cell(s),
                _top1_cell(s),
                _pct(_mean(s, "top5")),
                _score_cell(s, "balanced_accuracy"),
                _score_cell(s, "macro_f1"),
                _num(_mean(s, "log_loss"), 3),
                _num(_mean(s, "ece"), 3),
                _num(s.cost("extraction_seconds"), 1),
                _num(s.cost("fit_seconds"), 1),
                _num(s.cost("predict_seconds"), 2),
                _num(s.cost("total_seconds"), 1),
                _num(s.cost("images_per_s"), 0),
                _mib(s.cost("peak_host_bytes")),
                _mib(s.cost("peak_device_bytes")),
                "" if trainable is None else f"{trainable:,.0f}",
                _params(s),
            ]
        )
    return Table(header, rows)


def _store_costs(rows: list[dict]) -> dict[tuple[str, str], dict]:
    """The cost record of each feature store (by backbone and store key), once: a probe's, or
    LP-FT's that read it."""
    stores: dict[tuple[str, str], dict] = {}
    for row in rows:
        if store := row["provenance"].get("store"):
            stores.setdefault((row["backbone"], store.get("key", "")), row["cost"])
    return stores


def _cost_lines(rows: list[dict]) -> list[str]:
    """Each store's extraction once, however many probes share it, and the run's total.
    Every figure is rounded to 0.1 s before it is added, so the sums shown add up."""
    stores = _store_costs(rows)
    lines = []
    for (backbone, _key), cost in stores.items():
        reused = " (store reused from the cache: time of the run that built it)"
        lines.append(
            f"extraction, {backbone}: {cost['extraction_seconds']:.1f} s"
            f"{reused if cost['extraction_reused'] else ''}"
        )
    extraction = sum(round(c["extraction_seconds"], 1) for c in stores.values())
    fit = round(sum(row_cost(r, "fit_seconds") for r in rows), 1)
    predict = round(sum(row_cost(r, "predict_seconds") for r in rows), 1)
    lines.append(
        f"whole run: {extraction + fit + predict:.1f} s = extraction {extraction:.1f} s + "
        f"fitting {fit:.1f} s + prediction {predict:.1f} s"
    )
    return lines


def _processes_note(summaries: list[MethodSummary]) -> list[str]:
    """What the seconds of methods run on several processes at once mean."""
    spread = [f"{s.label} ({s.processes})" for s in summaries if s.processes > 1]
    if not spread:
        return []
    return [
        f"Methods run on several processes at once count the seconds of each: "
        f"{', '.join(spread)}. Their fit, predict and total seconds are wall seconds times "
        "the processes (of each piece, for a run resumed on another number; images/s is per "
        "process), as a store's extraction sums the seconds of "
        "the processes that filled it: costs compare the work done, however it was spread."
    ]


def _mixed_devices_note(summaries: list[MethodSummary]) -> list[str]:
    """A warning when costs come from several devices: results reused from a run on another
    device keep that run's seconds, which the others cannot be compared with."""
    devices = cost_devices(summaries)
    if len(devices) < 2:
        return []
    where = "; ".join(f"{device}: {', '.join(labels)}" for device, labels in devices.items())
    return [
        f"Costs were measured on {len(devices)} devices ({where}): compare seconds only "
        "between methods of the same device. Results reused from an earlier run keep the "
        "device and seconds of that run; to compare costs, run the pipeline on one device "
        "into a new folder (`featpipe run FILE --out NEW_DIR`)."
    ]


_EMPTY_SHOWN = 10  # empty classes named


def _per_class_table(picks: list[MethodSummary], empty: list[str]) -> Table:
    """A row per class with test images (``empty``: those without, no accuracy to show), each
    cell the mean over the method's seeds, as the results table's top-1."""
    rows = [
        [name, *(_pct(_class_mean(s, name)) for s in picks)]
        for name in picks[0].rows[0]["classes"]
        if name not in empty
    ]
    return Table(["class", *(s.label for s in picks)], rows)


def _class_mean(summary: MethodSummary, name: str) -> float | None:
    """A class's accuracy, the mean over seeds (None without test images: then in every seed,
    as seeds share the test images)."""
    values = [
        v for r in summary.rows if (v := r["metrics"]["per_class_accuracy"].get(name)) is not None
    ]
    return float(np.mean(values)) if values else None


def _confusion_figure(summary: MethodSummary, empty: list[str]) -> Figure:
    """The confusion matrix of a method's first seed (counts do not average), without the
    classes that have no test images, unless it predicts them: their columns hold images of
    the classes shown."""
    row = summary.rows[0]
    cm = np.asarray(row["metrics"]["confusion"])
    keep = [i for i, name in enumerate(row["classes"]) if name not in empty or cm[:, i].any()]
    keep = keep or list(range(len(cm)))  # an all-zero matrix (a hand-made row): all classes
    left_out = len(keep) < len(row["classes"])
    predicted = any(row["classes"][i] in empty for i in keep)
    note = (
        "; classes without test images left out" + (" unless predicted" if predicted else "")
        if left_out
        else ""
    )
    return Figure(
        f"confusion_{summary.kind}",
        f"Confusion matrix of the best {summary.kind} by validation accuracy: "
        f"{summary.label} (seed {summary.seeds[0]}{note}).",
        plots.confusion(
            cm[np.ix_(keep, keep)].tolist(), [row["classes"][i] for i in keep], summary.label
        ),
    )


def _empty_classes(row: dict) -> list[str]:
    """The classes without test images (integer labels with gaps leave classes empty)."""
    support = np.asarray(row["metrics"]["confusion"]).sum(axis=1)
    return [name for name, n in zip(row["classes"], support, strict=True) if not n]


def _empty_note(empty: list[str]) -> str:
    """E.g. " (4 more classes have no test images: 1, 2, 3, 4; ...)": what leaves them out
    (balanced accuracy averages over the classes with test images, macro F1 over those and
    the classes a method predicts, as scikit-learn)."""
    if not empty:
        return ""
    listed = ", ".join(empty[:_EMPTY_SHOWN]) + (" ..." if len(empty) > _EMPTY_SHOWN else "")
    more = f"{len(empty)} more class{'es have' if len(empty) > 1 else ' has'}"
    return (
        f" ({more} no test images: {listed}; left out of the per-class table and the "
        "class averages, in macro F1 unless a method predicts them)"
    )


def _skipped_notes(rows: list[dict]) -> list[str]:
    """One sentence when images were left out (``--on-error skip``: unreadable, or with
    non-finite features): how many, and the first few with their reasons. Every method of a
    run leaves out the same images."""
    worst = max(
        (r["provenance"].get("skipped") or {"count": 0} for r in rows), key=lambda s: s["count"]
    )
    if not worst["count"]:
        return []
    reasons = worst["first"].values()
    known = len(reasons) == worst["count"]  # else only the first few reasons are recorded
    left_out = skipped_images(worst["count"], count_not_finite(reasons) if known else None)
    first = "; ".join(f"{sid} ({reason})" for sid, reason in worst["first"].items())
    more = "" if known else " among others"
    return [
        f'Every method leaves out {left_out} under on_error = "skip": {first}{more}. '
        "`featpipe info STORE` lists them."
    ]


def _dedup_blocks(summaries: list[MethodSummary], checks: DataChecks) -> list:
    """Test top-1 of each method (the mean over its seeds, as in the results table) with the
    duplicated test images left out, so a reader sees whether leakage inflates the numbers;
    and which methods the table leaves out, since their predictions cannot be matched to the
    checked test images."""
    drop_exact, drop_near = checks.duplicated_test, checks.near_test | checks.duplicated_test
    if not drop_exact and not drop_near:
        return []
    key = ids_sha256(checks.test_ids)
    keep_exact = np.array([i not in drop_exact for i in checks.test_ids])
    keep_near = np.array([i not in drop_near for i in checks.test_ids])
    rows, left_out = [], []
    for s in summaries:
        tested = [r for r in s.rows if r["test"]["ids_sha256"] == key]
        if not tested:  # tested on other images (e.g. a fine-tune that read skipped files)
            left_out.append(s.label)
            continue
        # seeds × images: each seed tests the same images, so the mean is that of the seeds'
        correct = np.array(
            [np.asarray(r["test"]["y_true"]) == np.asarray(r["test"]["y_pred"]) for r in tested]
        )
        cells = [correct[:, k].mean() if k.any() else None for k in (keep_exact, keep_near)]
        label = s.label
        if len(tested) < len(s.rows):
            seeds = ", ".join(str(r["seed"]) for r in tested)
            label += f" ({'seed' if len(tested) == 1 else 'seeds'} {seeds})"
        rows.append([label, _pct(correct.mean()), *(_pct(c) for c in cells)])
    blocks: list = []
    if rows:
        blocks += [
            "Test top-1 (mean over seeds) with the duplicated test images left out:",
            Table(
                [
                    "method",
                    f"test top-1 % ({counted(len(checks.test_ids), 'image')})",
                    f"without exact duplicates ({int(keep_exact.sum())})",
                    f"without exact and near-duplicates ({int(keep_near.sum())})",
                ],
                rows,
            ),
        ]
    if left_out:
        blocks.append(
            f"Not in {'this table' if rows else 'a table without the duplicated test images'}: "
            f"{', '.join(left_out)}, which tested other images than the ones checked (or in "
            "another order, e.g. a fine-tune that read images the feature store skipped), so "
            "their predictions cannot be matched to the duplicated images."
        )
    return blocks


def _checks_section(summaries: list[MethodSummary], checks: DataChecks) -> Section:
    blocks: list = [
        "Checks on the data (also `featpipe check STORE`):",
        checks.lines(),
        *_dedup_blocks(summaries, checks),
    ]
    return Section("Data checks", blocks)


def _recommendation_section(
    summaries: list[MethodSummary], n_boot: int, n_val: int | None
) -> Section:
    blocks: list = list(advice.recommendation(summaries, n_boot))
    warnings = advice.warnings_for(summaries, n_val)
    if warnings:
        blocks += ["Warnings (results that look broken):", warnings]
    kept = advice.kept_probe_notes(summaries, n_val)
    if kept:
        blocks += ["Fine-tunes that kept their probe:", kept]
    return Section("Recommendation", blocks)


def _comparison_sections(summaries: list[MethodSummary], n_boot: int) -> list[Section]:
    interval = (
        "Newcombe's 95 % interval for paired proportions and McNemar's test; a "
        "method beats another only when both find the difference"
        if n_boot
        else "McNemar's test (no interval: n_boot is 0)"
    )
    scores_ci = f" (paired bootstrap intervals, {counted(n_boot, 'resample')})" if n_boot else ""
    sections = []
    paired = comparisons(summaries, n_boot=n_boot)
    if paired:
        pairs = (
            "Each fine-tune against the best probe (on validation) and the cheapest probe "
            "statistically tied with it"
            if any(s.kind == MethodKind.FINETUNE for s in summaries)
            else "The probe with the best validation accuracy against the cheapest probe tied "
            "with it and the runner-up on validation"
        )
        sections.append(
            Section(
                "Paired comparisons",
                [
                    f"{pairs}, on the same test images; difference in top-1 points with "
                    f"{interval}; cost is total wall seconds. Then the differences in balanced "
                    f"accuracy and macro F1{scores_ci}. Every pair: see "
                    '"All paired comparisons".',
                    [
                        f"{p.comparison.sentence()} (seed {p.seed}){_score_differences(p.scores)}."
                        for p in paired
                    ],
                ],
            )
        )
    matrix = all_pairs(summaries, n_boot=n_boot)
    n = len(summaries)
    empty = (
        f" An empty cell: the two could not be compared ({advice.NOT_PAIRED})."
        if len(matrix) < n * (n - 1) // 2
        else ""
    )
    if len(matrix) > len(paired):
        sections.append(
            Section(
                "All paired comparisons",
                [
                    "Row method minus column method, top-1 points on the same test images "
                    f"(lowest common seed); * marks a clear difference ({interval}), with "
                    f"McNemar's p-values Holm-adjusted over the table's {len(matrix)} pairs so "
                    f"that the chance of any false * stays at 5 %.{empty}",
                    _matrix_table(summaries, matrix),
                ],
                appendix=True,
            )
        )
    return sections


def _matrix_table(summaries: list[MethodSummary], matrix: dict) -> Table:
    n, clear = len(summaries), clear_after_holm(matrix)
    rows = []
    for i, s in enumerate(summaries):
        cells = []
        for j in range(n):
            c = matrix.get((min(i, j), max(i, j)))
            if c is None:
                cells.append("")
                continue
            pts = 100 * c.difference * (1 if i < j else -1)
            d = point_decimals(pts)
            cells.append(f"{pts:+.{d}f}{'*' if (min(i, j), max(i, j)) in clear else ''}")
        rows.append([f"{i + 1}. {s.label}", *cells])
    return Table(["method", *(str(j + 1) for j in range(n))], rows)


def _figures(summaries: list[MethodSummary]) -> Section:
    wilson = _with_intervals(summaries)  # else no caption may promise them
    figures = Section(
        "Figures",
        [
            Figure(
                "accuracy_by_method",
                "Test top-1 by method"
                + (
                    " with 95 % Wilson score intervals."
                    if wilson
                    else " (no intervals: n_boot is 0)."
                ),
                plots.accuracy_by_method(summaries),
            ),
            Figure(
                "accuracy_vs_cost",
                "Test top-1 against total wall seconds (log scale).",
                plots.accuracy_vs_cost(summaries),
            ),
        ],
    )
    if len({s.train_size for s in summaries if s.train_size is not None}) > 1:
        figures.blocks.append(
            Figure(
                "accuracy_by_train_size",
                "Test top-1"
                + (" (95 % Wilson score intervals)" if wilson else "")
                + " against the number of training images, one line per method (log scale).",
                plots.accuracy_by_train_size(summaries),
            )
        )
    # One point per layer and head: with a sweep, those at the main results' size.
    main, size = advice.at_largest_size(summaries), advice.largest_size(summaries)
    if len({s.layer for s in main if s.kind == MethodKind.PROBE and s.layer}) > 1:
        at = "" if size is None else f", at {counted(size, 'training image')}"
        figures.blocks.append(
            Figure(
                "accuracy_by_layer",
                f"Test top-1 by layer for each head{at}.",
                plots.accuracy_by_layer(main),
            )
        )
    if any(s.kind == MethodKind.FINETUNE and s.rows[0]["history"] for s in summaries):
        figures.blocks.append(
            Figure(
                "finetune_curves",
                "Fine-tuning curves (first seed).",
                plots.finetune_curves(summaries),
            )
        )
    return figures


def _with_intervals(summaries: list[MethodSummary]) -> bool:
    """Whether the report shows intervals (none when its n_boot is 0)."""
    return any(s.top1_ci for s in summaries)


def _spread(summaries: list[MethodSummary]) -> str:
    """What the results table's figures are, intervals included unless the report's n_boot is
    0."""
    if _with_intervals(summaries):
        return (
            "Top-1 is the mean over seeds (± standard deviation when several) with the 95 % "
            "Wilson score interval over the test images of one proportion at that mean (with "
            "several seeds, as if each image were right in all of them or in none: it assumes "
            "the most variance the seeds' mean can have over these images, which it has when "
            "the seeds agree image by image, and how the seeds differ is the ±), balanced "
            "accuracy and macro F1 with a 95 % bootstrap interval over the test images (the "
            "mean of the seeds'); "
        )
    return (
        "Top-1, balanced accuracy and macro F1 are the means over seeds (top-1 ± its standard "
        "deviation when several), without intervals (n_boot is 0); "
    )


def build_document(
    rows: list[dict],
    n_boot: int = DEFAULT_BOOT,
    notes: Sequence[str] = (),
    checks: DataChecks | None = None,
    run: str | None = None,
) -> Document:
    """Everything a report shows, from the rows of one configuration (see
    :class:`featpipe.report.runplan.RunPlan`; rows repeating a method and seed: the latest
    wins). ``n_boot`` resamples go into each paired comparison; ``notes`` open the report;
    ``checks`` (:mod:`featpipe.evaluate.leakage`) add the data checks; ``run`` names a run
    with no rows yet (its plan's name)."""
    rows = latest_rows(rows)
    summaries = summarize(rows, n_boot)
    run = rows[0]["run"] if rows else run or "(empty)"
    if not rows:
        empty = Section("Results", [*notes, "No results yet."])
        return Document(f"featpipe report: {run}", [empty])
    n_test = rows[0]["metrics"]["n"]
    classes = rows[0]["classes"]
    empty = _empty_classes(rows[0])
    present = len(classes) - len(empty)
    overview = Section(
        "Results",
        [
            *_skipped_notes(rows),
            f"{counted(len(summaries), 'method')} on {counted(n_test, 'test image')} of "
            f"{counted(present, 'class', 'classes')}"
            f"{_empty_note(empty)}. {_spread(summaries)}"
            "costs are wall seconds on the machine named under provenance."
            + (_SEED_NOTES if any(s.seed_note for s in summaries) else ""),
            _results_table(summaries),
        ],
    )
    overview.blocks += [
        "Wall seconds. Feature extraction is shared by every probe on the same store, so the "
        "run's total counts it once; each probe's own total includes it, to compare probes "
        "against fine-tuning from images.",
        _cost_lines(rows),
        *_processes_note(summaries),
        *_mixed_devices_note(summaries),
    ]
    n_val = checks.counts.get("val") if checks else None  # the images validation gaps are on
    recommendation = _recommendation_section(summaries, n_boot, n_val)
    recommendation.blocks[:0] = notes  # what the report left out bears on its advice too
    sections = [recommendation, overview]
    if checks is not None:
        sections.append(_checks_section(summaries, checks))
    # With a sweep, comparisons and the best methods are those at the largest size.
    main = advice.at_largest_size(summaries)
    comparison_sections = _comparison_sections(main, n_boot)
    sections += [s for s in comparison_sections if not s.appendix]
    sections.append(_figures(summaries))
    picks = [s for s in (best(main, kind) for kind in MethodKind) if s]
    if picks:
        sections.append(
            Section(
                "Best methods",
                [
                    *(_confusion_figure(s, empty) for s in picks),
                    "Per-class accuracy (%) on test, the mean over seeds, of the methods chosen "
                    "above" + (" (classes without test images left out):" if empty else ":"),
                    _per_class_table(picks, empty),
                ],
            )
        )
    sections.append(
        Section(
            "Provenance",
            [
                Table(["item", "value"], [[k, v] for k, v in provenance(rows)]),
            ],
        )
    )
    sections += [s for s in comparison_sections if s.appendix]
    return Document(f"featpipe report: {run}", sections)
