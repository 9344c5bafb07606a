"""Report figures as PNG bytes (matplotlib's Agg canvas, no pyplot global state)."""

from __future__ import annotations

import contextlib
import functools
import io
import warnings

import matplotlib
import numpy as np
from matplotlib import font_manager
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator

from featpipe.report.results import MethodKind
from featpipe.report.summary import MethodSummary

_COLORS = {MethodKind.PROBE: "#4C72B0", MethodKind.FINETUNE: "#DD8452"}
_SERIES = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860")


# Fonts with CJK glyphs, tried in turn after the default font for any character it lacks
# (class names such as 蚂蚁 or 蜜蜂); Debian ships Noto in fonts-noto-cjk.
CJK_FONTS = (
    "Noto Sans CJK JP",
    "Noto Sans CJK SC",
    "Noto Serif CJK JP",
    "Noto Serif CJK SC",
    "Source Han Sans",
    "WenQuanYi Zen Hei",
    "Droid Sans Fallback",
)
CJK_PACKAGE = "fonts-noto-cjk"


@functools.cache
def cjk_font() -> str | None:
    """The first installed CJK-capable font family, or None. matplotlib's font list is cached
    on disk and misses fonts installed after it was built: those are added from the system's
    font files."""
    installed = {f.name for f in font_manager.fontManager.ttflist}
    if not installed.intersection(CJK_FONTS):
        for path in font_manager.findSystemFonts():
            if any(k in path.lower() for k in ("cjk", "wqy", "droidsansfallback", "sourcehan")):
                with contextlib.suppress(OSError, RuntimeError, ValueError):
                    font_manager.fontManager.addfont(path)
        installed = {f.name for f in font_manager.fontManager.ttflist}
    return next((name for name in CJK_FONTS if name in installed), None)


def font_family() -> list[str]:
    """matplotlib's font.family with a CJK fallback after the default, when one is installed."""
    default = list(matplotlib.rcParams["font.sans-serif"][:1]) or ["DejaVu Sans"]
    fallback = cjk_font()
    return default + ([fallback] if fallback else [])


_warned_missing = False


def _glyph_warnings(caught: list[warnings.WarningMessage]) -> None:
    """Say once, in one line, that a label could not be drawn and what to install."""
    global _warned_missing
    missing = [w for w in caught if "Glyph" in str(w.message) and "missing" in str(w.message)]
    for w in caught:
        if w not in missing:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if missing and not _warned_missing:
        _warned_missing = True
        warnings.warn(
            "Plot labels have characters no installed font draws (e.g. Chinese class names); "
            f"install a CJK font such as Debian's {CJK_PACKAGE} to draw them.",
            stacklevel=3,
        )


_LONGEST = 60  # characters of a name drawn in a plot; the tables show it whole


def _short(name: str) -> str:
    """``name`` cut in the middle to _LONGEST characters, keeping both ends (method labels
    often differ at the end: "... on layer blocks.6"). A 320-character label made a plot
    2,900 px wide, which report.html shows at a third of its size."""
    if len(name) <= _LONGEST:
        return name
    half = (_LONGEST - 1) // 2
    return f"{name[:half]}…{name[-half:]}"


_KEPT = 10  # characters kept at each end of a name cut around where it differs from another


def _shorts(names: list[str]) -> list[str]:
    """Each name as :func:`_short` draws it, except where other names would be drawn alike
    (e.g. "logistic regression on layers stages.1:avg+stages.2:avg+... [timm:convnext...]" and
    the same with stages.2:gem): those show, between their two ends, the text from a little
    before where they differ from the most alike, so that no two methods, layers or classes
    share a drawn name."""
    cut = [_short(n) for n in names]
    out = list(cut)
    for i, name in enumerate(names):
        alike = [m for m, c in zip(names, cut, strict=True) if c == cut[i] and m != name]
        if alike:
            differs = max(_common_prefix(name, m) for m in alike)
            start = max(_KEPT, differs - 12)
            room = _LONGEST - 2 * _KEPT - 2
            end = (
                f"…{name[-_KEPT:]}"
                if len(name) - start > room + _KEPT + 1
                else name[start + room :]
            )
            out[i] = f"{name[:_KEPT]}…{name[start : start + room]}{end}"
    return out


def _common_prefix(a: str, b: str) -> int:
    return next(
        (k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def _legend(ax, artists: list, **kwargs) -> None:
    """A legend of ``artists`` under their own labels. Handed over explicitly: matplotlib's
    legend() on its own leaves out labels that start with "_" (its mark for "not in the
    legend"), and a method, layer or class may well be named "_base"."""
    if artists:
        ax.legend(artists, _shorts([a.get_label() for a in artists]), **kwargs)


def _intervals(ax, at, ci: np.ndarray, horizontal: bool = False, **kwargs) -> None:
    """Error bars from each interval's low end to its high end (``ci``: rows (lo, hi)), drawn
    where they are rather than around the point estimate: an interval in a results file not
    written by featpipe can miss its point, and matplotlib refuses bars of negative length."""
    if len(ci):
        mid, half = ci.mean(axis=1), np.abs(ci[:, 1] - ci[:, 0]) / 2
        xy, err = ((mid, at), "xerr") if horizontal else ((at, mid), "yerr")
        ax.errorbar(*xy, **{err: half}, fmt="none", **kwargs)


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # No Software metadata: rebuilding from the same rows gives the same bytes.
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    _glyph_warnings(caught)
    return buf.getvalue()


def _fonts(plot):
    """Draw ``plot``'s text with a CJK fallback for characters the default font lacks (text
    takes its font when created, so the whole plot runs in the context), and as plain text:
    labels and class names come from users' data, and mathtext would read "$5 and $6" as
    math and raise on "$x^$"."""

    @functools.wraps(plot)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context({"font.family": font_family(), "text.parse_math": False}):
            return plot(*args, **kwargs)

    return wrapper


@_fonts
def accuracy_by_method(summaries: list[MethodSummary]) -> bytes:
    """Horizontal bars of mean top-1 with the 95 % Wilson score interval (rows that have one)."""
    order = sorted(summaries, key=lambda s: s.top1)
    fig = Figure(figsize=(8, 0.4 * len(order) + 1.2))
    ax = fig.add_subplot()
    y = np.arange(len(order))
    acc = [100 * s.top1 for s in order]
    ax.barh(y, acc, color=[_COLORS[s.kind] for s in order])
    shown = [i for i, s in enumerate(order) if s.top1_ci]
    ci = np.array([[100 * v for v in order[i].top1_ci] for i in shown]).reshape(-1, 2)
    _intervals(ax, shown, ci, horizontal=True, ecolor="black", capsize=3)
    ax.set_yticks(y, _shorts([s.label for s in order]), fontsize=8)
    ax.set_xlabel("test top-1 accuracy (%)" + (", bars: 95 % Wilson CI" if shown else ""))
    kinds = [k for k in _COLORS if any(s.kind == k for s in order)]
    patches = [Patch(color=_COLORS[k], label=str(k)) for k in kinds]
    # Above the axes: inside, the legend covered the ends of bars that all reach near 100 %.
    _legend(ax, patches, loc="lower right", bbox_to_anchor=(1, 1), ncols=len(patches), fontsize=8)
    # From 0, so that bar lengths are proportional to accuracy (the zoomed axis drew 90 % 1.7
    # times as long as 80 %); the intervals and the report's table show the small differences.
    ax.set_xlim(0, 100)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


@_fonts
def accuracy_vs_cost(summaries: list[MethodSummary]) -> bytes:
    """Top-1 against total wall seconds (extraction + fit + predict), log x axis. Labels go to
    the cost frontier and the most accurate fine-tune: a label per point is unreadable past a
    dozen methods, and the table names them all. A log axis has no 0: methods measured at 0 s
    are drawn at half the cheapest other cost, hollow and pointing left, and the legend says so."""
    fig = Figure(figsize=(8, 5))
    ax = fig.add_subplot()
    pts = [s for s in summaries if s.cost("total_seconds") is not None]
    cost = [s.cost("total_seconds") for s in pts]
    floor = min((c for c in cost if c > 0), default=2.0) / 2
    x = [c or floor for c in cost]
    shown = []
    for kind, color in _COLORS.items():
        of_kind = [i for i, s in enumerate(pts) if s.kind == kind]
        for zero in (False, True):
            on = [i for i in of_kind if (cost[i] == 0) == zero]
            if on:
                shown.append(
                    ax.scatter(
                        [x[i] for i in on],
                        [100 * pts[i].top1 for i in on],
                        label=f"{kind}, measured 0 s (drawn at {floor:.2g} s)" if zero else kind,
                        marker="<" if zero else "o",
                        facecolors="none" if zero else color,
                        edgecolors=color,
                        s=40,
                        zorder=3,
                    )
                )
    ax.set_xscale("log")
    labelled = labelled_points(pts)
    xy = [(x[i], 100 * pts[i].top1) for i in labelled]
    names = _shorts([s.label for s in pts])
    labels = [names[i] for i in labelled]
    offsets = label_offsets(ax, xy, labels, LABEL_FONTSIZE)
    for label, point, (dx, dy) in zip(labels, xy, offsets, strict=True):
        ax.annotate(
            label,
            point,
            fontsize=LABEL_FONTSIZE,
            xytext=(dx, dy),
            textcoords="offset points",
            ha="left" if dx >= 0 else "right",
            va="bottom",
            # A label moved off its point keeps a thin line to it.
            arrowprops=None if dy == LABEL_DY else {"arrowstyle": "-", "lw": 0.5, "color": "0.5"},
            bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.7},
            zorder=4,
        )
    seconds = log_tick_labels(*ax.get_xlim())
    ax.xaxis.set_major_formatter(seconds)
    ax.xaxis.set_minor_formatter(seconds)
    ax.set_xlabel("wall seconds (extraction + fit + predict, log scale)")
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.set_title(
        "labelled: methods no other beats on both cost and accuracy, and the best fine-tune",
        fontsize=8,
    )
    ax.grid(alpha=0.3, which="both")
    _legend(ax, shown, loc="best")  # where no point is: lower right hid the costliest
    return _png(fig)


# (widest range in decades, the leading digits whose ticks get a label): on an 8-inch plot the
# labels 8, 9, 10 sit 0.05 decades apart, which is legible up to about 0.8 decades across.
_TICK_DIGITS = (
    (0.8, set(range(1, 11))),
    (2.5, {1, 2, 3, 5, 10}),
    (5.0, {1, 2, 5, 10}),
    (np.inf, {1, 10}),
)


def log_tick_labels(lo: float, hi: float) -> FuncFormatter:
    """Labels for the ticks of a log axis from ``lo`` to ``hi``: plain numbers (0.06, 6 and
    20, not 6e-02 or 2x10^1), on every tick of a narrow range and on fewer as it widens, so
    that labels never run into each other."""
    decades = np.log10(hi / lo)
    shown = next(digits for span, digits in _TICK_DIGITS if decades <= span)

    def label(value: float, _pos) -> str:
        if value <= 0:
            return ""
        lead = round(value / 10 ** np.floor(np.log10(value)))  # its leading digit
        return f"{value:g}" if lead in shown else ""

    return FuncFormatter(label)


def labelled_points(summaries: list[MethodSummary]) -> list[int]:
    """Indices of the cost frontier (no other method at most as costly and more accurate, or
    cheaper and as accurate) and of the most accurate fine-tune."""
    cost = [s.cost("total_seconds") or 0.0 for s in summaries]
    top1 = [s.top1 for s in summaries]
    keep = {
        i
        for i in range(len(summaries))
        if not any(
            (cost[j] <= cost[i] and top1[j] > top1[i]) or (cost[j] < cost[i] and top1[j] >= top1[i])
            for j in range(len(summaries))
        )
    }
    tunes = [i for i, s in enumerate(summaries) if s.kind == MethodKind.FINETUNE]
    if tunes:
        keep.add(max(tunes, key=lambda i: top1[i]))
    return sorted(keep)


LABEL_FONTSIZE = 7
LABEL_DX, LABEL_DY = 4.0, 2.0


def label_offsets(
    ax, points: list[tuple[float, float]], labels: list[str], fontsize: float
) -> list[tuple[float, float]]:
    """Offsets (points) for point labels, so that no two labels cover each other and none
    leaves the axes: a label goes right of its point, or left where the axes end there; from
    the top, one that would overlap a label already placed takes the nearest free line, below
    before above."""
    ax.autoscale_view()
    per_point = ax.figure.dpi / 72  # display pixels per typographic point
    x0, y0, x1, y1 = (v / per_point for v in ax.bbox.extents)
    line = fontsize + 2
    placed: list[tuple[float, float, float, float]] = []
    offsets: list[tuple[float, float]] = [(LABEL_DX, LABEL_DY)] * len(points)
    for i in sorted(range(len(points)), key=lambda i: -points[i][1]):
        x, y = ax.transData.transform(points[i]) / per_point
        width = 0.6 * fontsize * len(labels[i])  # a generous estimate of the text's width
        dx = LABEL_DX if x + LABEL_DX + width <= x1 or x - LABEL_DX - width < x0 else -LABEL_DX
        left = x + dx if dx > 0 else x + dx - width
        candidates = [
            LABEL_DY + k * line * sign for k in range(len(points) + 1) for sign in (-1, 1)
        ]
        candidates = sorted(
            dict.fromkeys(candidates), key=lambda d: (abs(d - LABEL_DY), d > LABEL_DY)
        )
        inside = [d for d in candidates if y0 <= y + d and y + d + line <= y1] or candidates
        for dy in inside:
            box = (left, y + dy, left + width, y + dy + line)
            if not any(_overlap(box, other) for other in placed):
                break
        placed.append(box)
        offsets[i] = (dx, dy)
    return offsets


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@_fonts
def accuracy_by_layer(summaries: list[MethodSummary]) -> bytes:
    """One line per (backbone, head) across the layers, in extraction order."""
    # Probes on a feature layer (a probe-kind stage may read none, e.g. a baseline).
    probes = [s for s in summaries if s.kind == MethodKind.PROBE and s.layer and s.head]
    layers = list(dict.fromkeys(s.layer for s in probes))
    fig = Figure(figsize=(8, 4.5))
    ax = fig.add_subplot()
    keys = dict.fromkeys((s.backbone, s.head) for s in probes)
    colors = _palette(set(keys))  # the default cycle repeats its colours past ten lines
    lines = []
    for key in keys:
        by_layer = {s.layer: 100 * s.top1 for s in probes if (s.backbone, s.head) == key}
        xs = [i for i, layer in enumerate(layers) if layer in by_layer]
        y = [by_layer[layers[i]] for i in xs]
        lines += ax.plot(xs, y, marker="o", color=colors[key], label=" / ".join(key))
    ax.set_xticks(range(len(layers)), _shorts(layers), fontsize=8)
    ax.set_xlabel("layer")
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.grid(alpha=0.3)
    _legend(ax, lines, fontsize=7)
    return _png(fig)


_PROBE_STYLES = ("--", ":", "-.")
_MARKERS = ("s", "^", "D", "v", "P")


def _palette(keys: set) -> dict:
    """A distinct colour per key, in sorted order: tab10, or tab20 past ten keys."""
    cmap = matplotlib.colormaps["tab10" if len(keys) <= 10 else "tab20"]
    ordered = sorted(keys, key=str)
    return {k: cmap(i % cmap.N) for i, k in enumerate(ordered)}


def _sweep_key(s: MethodSummary) -> tuple:
    return s.backbone, s.kind, s.layer, s.head, s.mode


def _sweep_name(s: MethodSummary) -> str:
    """The method's label as the tables show it, less the size that each point of its line
    has on its own (``featpipe.pipeline.jobs.sized`` adds ", N train images")."""
    return s.label.removesuffix(f", {s.train_size} train images")


_DODGE_STEP = 0.03  # decades between neighbouring lines at one training size
_DODGE = 0.1  # decades: the most that all the lines at one size are spread across


def _dodges(sizes: list[int], lines: int) -> np.ndarray:
    """A factor per line that moves its points a little along the log x axis, so that the
    error bars of methods at the same size sit side by side rather than on top of each
    other: together they spread at most _DODGE decades, and at most a third of the gap
    between the two closest sizes, so each point stays nearer its own size than any other."""
    if lines < 2:
        return np.ones(max(lines, 1))
    gaps = np.diff(np.log10(sorted(set(sizes))))
    spread = min(_DODGE_STEP * (lines - 1), _DODGE, *(gaps / 3))
    return 10 ** np.linspace(-spread / 2, spread / 2, lines)


@_fonts
def accuracy_by_train_size(summaries: list[MethodSummary]) -> bytes:
    """Test top-1 (95 % interval, where the rows have one) against training images, one line
    per method, log x."""
    swept = [s for s in summaries if s.train_size is not None]
    fig = Figure(figsize=(8, 5))
    ax = fig.add_subplot()
    # A colour per head or fine-tuning mode, a line style and marker per layer (fine-tunes
    # solid): twelve lines stay apart where one colour cycle would repeat.
    colors = _palette({(s.backbone, s.head or s.mode) for s in swept})
    layers = list(dict.fromkeys(s.layer for s in swept if s.kind == MethodKind.PROBE))
    lines = []
    keys = list(dict.fromkeys(_sweep_key(s) for s in swept))
    dodges = _dodges([s.train_size for s in swept], len(keys))
    for key, dodge in zip(keys, dodges, strict=True):
        line = sorted((s for s in swept if _sweep_key(s) == key), key=lambda s: s.train_size)
        x = [s.train_size * dodge for s in line]
        y = np.array([100 * s.top1 for s in line])
        shown = [s for s in line if s.top1_ci]  # none: n_boot 0
        ci = np.array([[100 * v for v in s.top1_ci] for s in shown]).reshape(-1, 2)
        first = line[0]
        if first.kind == MethodKind.FINETUNE:
            style, marker = "-", "o"
        else:
            k = layers.index(first.layer)
            style, marker = _PROBE_STYLES[k % len(_PROBE_STYLES)], _MARKERS[k % len(_MARKERS)]
        color = colors[(first.backbone, first.head or first.mode)]
        lines += ax.plot(
            x, y, marker=marker, linestyle=style, color=color, label=_sweep_name(first)
        )
        _intervals(ax, [s.train_size * dodge for s in shown], ci, ecolor=color, capsize=3)
    ax.set_xscale("log")
    sizes = sorted({s.train_size for s in swept})
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.minorticks_off()
    apart = ", methods drawn slightly apart at each size" if len(keys) > 1 else ""
    ax.set_xlabel(f"training images (log scale{apart})")
    bars = any(s.top1_ci for s in swept)
    ax.set_ylabel("test top-1 accuracy (%)" + (", bars: 95 % Wilson CI" if bars else ""))
    ax.grid(alpha=0.3)
    _legend(ax, lines, fontsize=7)
    return _png(fig)


@_fonts
def finetune_curves(summaries: list[MethodSummary]) -> bytes:
    """Per fine-tune (first seed): losses on the left axis, accuracies (%) on the right."""
    tunes = [s for s in summaries if s.kind == MethodKind.FINETUNE and s.rows[0]["history"]]
    fig = Figure(figsize=(8, 3.2 * max(1, len(tunes))))
    titles = _shorts([s.label for s in tunes])
    for i, s in enumerate(tunes):
        history = s.rows[0]["history"]
        ax = fig.add_subplot(len(tunes), 1, i + 1)
        ax2 = ax.twinx()
        epochs = [h.get("epoch", j + 1) for j, h in enumerate(history)]
        # Keys of every epoch: epoch 0 (before training) logs no train_accuracy.
        keys = [k for k in dict.fromkeys(k for h in history for k in h) if k != "epoch"]
        keys = [k for k in keys if _numeric(history, k)]
        # One colour per quantity across both axes; dashed lines are accuracies (right axis).
        plotted = [k for k in keys if "loss" in k or "acc" in k]
        lines: dict[bool, list] = {False: [], True: []}  # losses, then accuracies
        for key, color in zip(plotted, _SERIES, strict=False):
            accuracy = "loss" not in key
            target, style = (ax2, "--") if accuracy else (ax, "-")
            scale = 100 if accuracy else 1  # accuracies in %, as every other figure and table
            lines[accuracy] += target.plot(
                epochs,
                [np.nan if h.get(key) is None else scale * h[key] for h in history],
                marker=".",
                linestyle=style,
                color=color,
                label=key,
            )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(titles[i], fontsize=9, loc="left")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax2.set_ylabel("accuracy (%)")
        # Above the axes, right of the title: inside, it hid the lines that cross it.
        shown = lines[False] + lines[True]
        _legend(ax, shown, fontsize=7, loc="lower right", bbox_to_anchor=(1, 1), ncols=2)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _numeric(history: list[dict], key: str) -> bool:
    """Numbers in every epoch that has the key (epoch 0 may log val_loss but no train_loss)."""
    values = [h.get(key) for h in history]
    present = [v for v in values if v is not None]
    return bool(present) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in present
    )


_NAMED_CLASSES = 60


@_fonts
def confusion(matrix: list[list[int]], classes: list[str], title: str) -> bytes:
    """Row-normalised confusion matrix (rows = true class), counts in the cells when few."""
    cm = np.asarray(matrix, dtype=np.float64)
    norm = cm / np.clip(cm.sum(axis=1, keepdims=True), 1, None)
    size = min(10.0, 2.5 + 0.45 * len(classes))
    fig = Figure(figsize=(size, size))
    ax = fig.add_subplot()
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    # Past 60 classes, names at 7 pt would be drawn over each other: every k-th is named.
    step = -(-len(classes) // _NAMED_CLASSES)
    ticks = range(0, len(classes), step)
    every = f" (one class in {step} named)" if step > 1 else ""
    names = _shorts([classes[i] for i in ticks])
    ax.set_xticks(ticks, names, rotation=90, fontsize=7)
    ax.set_yticks(ticks, names, fontsize=7)
    ax.set_xlabel("predicted" + every)
    ax.set_ylabel("true" + every)
    ax.set_title(_short(title), fontsize=9)
    if len(classes) <= 20:
        for (i, j), count in np.ndenumerate(cm.astype(int)):
            if count:
                ax.text(
                    j,
                    i,
                    str(count),
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    return _png(fig)
