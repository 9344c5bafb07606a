"""What a report advises: the Recommendation paragraph and the warnings on results that look
broken. Every choice here reads validation accuracy, never test; test numbers are then quoted
for the methods chosen, and paired test comparisons only say which methods are tied."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from featpipe.evaluate import Comparison
from featpipe.evaluate.metrics import clearly_below
from featpipe.report.results import MethodKind
from featpipe.report.summary import (
    MethodSummary,
    best,
    compare_pair,
    tie_rule,
    ties,
)
from featpipe.words import agrees, counted, listed

FINAL_LAYER = "pooled"  # the backbone's last pooled output: every other layer is intermediate
MIN_TEST = 100  # below this many test images a 95 % interval on top-1 spans about ±10 points
WIDE_CI = 0.10  # a top-1 interval wider than this (fraction) separates little
# Why a paired comparison is missing: rows record only a hash of their test ids, so images
# tested in another order cannot be matched up, and are never paired by position.
NOT_PAIRED = "no seed of both tested the same images in the same order"


def _val(s: MethodSummary) -> float:
    return -1.0 if s.val_accuracy is None else s.val_accuracy


def choose(summaries: list[MethodSummary]) -> MethodSummary | None:
    """The method with the best mean validation accuracy (ties: the first in run order)."""
    scored = [s for s in summaries if s.val_accuracy is not None]
    return max(scored, key=_val) if scored else None


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _apart(a: float, b: float) -> tuple[str, str]:
    """``a`` and ``b`` as ``_pct`` shows them, with as many more decimals (up to 4) as tell
    them apart: advice that says one is ahead must not show "80.0 % against 80.0 %". Values
    that 4 decimals do not tell apart (equal ones: the final layer best, or no final layer
    run) show as ``_pct`` does."""
    for d in range(1, 5):
        x, y = f"{100 * a:.{d}f} %", f"{100 * b:.{d}f} %"
        if x != y:
            return x, y
    return _pct(a), _pct(b)


def _test(s: MethodSummary) -> str:
    ci = f", 95 % CI {100 * s.top1_ci[0]:.1f}–{100 * s.top1_ci[1]:.1f}" if s.top1_ci else ""
    return f"{_pct(s.top1)} on test{ci}"


def _validation(s: MethodSummary) -> str:
    if s.val_accuracy is None:  # none recorded, or NaN (a results file featpipe did not write)
        return "no validation score"
    return f"validation {_pct(s.val_accuracy)}"


def _ratio(x: float) -> str:
    return f"{x:.0f}" if x >= 10 else f"{x:.1f}"


@dataclass
class Advice:
    """The methods the recommendation names, for the report and its comparisons."""

    chosen: MethodSummary | None
    tied: list[MethodSummary]  # tied with ``chosen`` on test (summary.ties)
    ahead: list[MethodSummary]  # clearly better than ``chosen`` on test, though validation chose it
    cheapest: MethodSummary | None  # the cheapest of ``chosen`` and ``tied``
    # Not compared with ``chosen``: no seed of both tested the same images in the same order.
    unpaired: list[MethodSummary]
    compared: int  # methods compared with ``chosen`` (a family for Holm's correction)


def advise(summaries: list[MethodSummary], n_boot: int) -> Advice:
    chosen = choose(summaries)
    if chosen is None:
        return Advice(None, [], [], None, [], 0)
    found = ties(chosen, [s for s in summaries if s is not chosen], n_boot)
    group = [chosen, *found.tied]
    costed = [s for s in group if s.cost("total_seconds") is not None]  # 0 s is a cost
    cheapest = min(costed, key=lambda s: s.cost("total_seconds")) if costed else None
    return Advice(chosen, found.tied, found.ahead, cheapest, found.unpaired, found.compared)


def recommendation(summaries: list[MethodSummary], n_boot: int) -> list[str]:
    """The Recommendation section's sentences, one paragraph each."""
    if not summaries:
        return []
    swept = [s for s in summaries if s.train_size is not None]
    largest = largest_size(summaries)
    at_full = at_largest_size(summaries)
    advice = advise(at_full, n_boot)
    chosen = advice.chosen
    if chosen is None:
        return ["No method has a validation score, so the report makes no recommendation."]
    size = f" at {counted(largest, 'training image')}" if largest is not None else ""
    text = [
        f"Use {chosen.label}: it has the best validation accuracy{size} "
        f"({_pct(chosen.val_accuracy)}) of {counted(len(at_full), 'method')}, and scores "
        f"{_test(chosen)}." + _tie_sentence(advice, n_boot)
    ]
    for paragraph in (
        _finetune_sentence(at_full, n_boot),
        _layer_sentence(at_full, n_boot),
        _crossover_sentence(summaries, n_boot) if swept else None,
    ):
        if paragraph:
            text.append(paragraph)
    text.append(
        "Every choice above is made on validation accuracy; test accuracy is only quoted for "
        "the methods chosen, and the paired test comparisons only decide which are tied."
    )
    return text


def largest_size(summaries: list[MethodSummary]) -> int | None:
    """The training-set size of the main results: None (the whole train split) when any row
    has it, else the largest size of the sweep."""
    sizes = {s.train_size for s in summaries}
    return None if None in sizes else max(sizes)


def at_largest_size(summaries: list[MethodSummary]) -> list[MethodSummary]:
    """The methods at the main results' training-set size (all of them without a sweep)."""
    largest = largest_size(summaries)
    return [s for s in summaries if s.train_size == largest]


def _tie_sentence(advice: Advice, n_boot: int) -> str:
    chosen, tied = advice.chosen, advice.tied
    if not tied:
        others = "other method it could be compared with" if advice.unpaired else "other method"
        text = f" No {others} is statistically tied with it on test."
    else:
        # "on test": the first figure in brackets in this paragraph is a validation accuracy
        names = ", ".join(f"{s.label} ({_pct(s.top1)} on test)" for s in tied)
        rule = tie_rule(n_boot, advice.compared)
        text = f" Statistically tied with it on test ({rule}): {names}."
    cheap = advice.cheapest
    if cheap is not None and cheap is not chosen and tied:
        cheap_s, chosen_s = cheap.cost("total_seconds"), chosen.cost("total_seconds")
        if cheap_s == 0:  # no ratio to 0 s
            cost = "a cost measured as 0 s"
        else:
            ratio = chosen_s / cheap_s
            cost = f"1/{_ratio(ratio)} of the cost" if ratio >= 1.5 else "about the same cost"
        text += (
            f" The cheapest of these is {cheap.label}, at {cost} "
            f"({cheap_s:.1f} s against {chosen_s:.1f} s"
            f" in all, shared feature extraction included; {_validation(cheap)}, "
            f"{_test(cheap)})."
        )
        if cheap.devices and chosen.devices and cheap.devices != chosen.devices:
            text += (
                f" Their seconds come from different devices ({', '.join(cheap.devices)} "
                f"against {', '.join(chosen.devices)}): the ratio is not like for like."
            )
    elif cheap is chosen and tied:
        text += " It is also the cheapest of them."
    if advice.ahead:
        names = ", ".join(s.label for s in advice.ahead)
        text += (
            f" {names} scored higher on test, but validation did not pick "
            f"{'it' if len(advice.ahead) == 1 else 'them'}: choosing on test would overstate it."
        )
    if advice.unpaired:
        names = ", ".join(s.label for s in advice.unpaired)
        text += f" {names} could not be compared with it ({NOT_PAIRED})."
    return text


def _finetune_sentence(summaries: list[MethodSummary], n_boot: int) -> str | None:
    tune, probe = best(summaries, MethodKind.FINETUNE), best(summaries, MethodKind.PROBE)
    if tune is None or probe is None:
        return None
    paired = compare_pair(tune, probe, n_boot)
    if paired is None:
        return (
            f"Whether fine-tuning paid for its cost is not known: the best fine-tune and the "
            f"best probe on validation, {tune.label} and {probe.label}, could not be compared "
            f"({NOT_PAIRED})."
        )
    c: Comparison = paired.comparison
    paid = c.verdict == "clear" and c.difference > 0
    verdict = "paid for its cost" if paid else "did not pay for its cost"
    return (
        f"Fine-tuning {verdict}: of the methods chosen on validation, {c.sentence()} "
        f"(test, seed {paired.seed})."
    )


def _on_test(a: MethodSummary, b: MethodSummary, n_boot: int) -> tuple[bool, str]:
    """Whether A clearly beats B on test (a validation gap can be noise: 0.1 point on a few
    hundred images), and the paired comparison in words."""
    paired = compare_pair(a, b, n_boot)
    if paired is None:
        return False, f"{a.label} and {b.label} could not be compared on test ({NOT_PAIRED})"
    c = paired.comparison
    return c.verdict == "clear" and c.difference > 0, f"{c.sentence()} (test, seed {paired.seed})"


def _layer_sentence(summaries: list[MethodSummary], n_boot: int) -> str | None:
    by_layer: dict[str, MethodSummary] = {}
    for s in summaries:
        usable = s.kind == MethodKind.PROBE and s.layer and s.val_accuracy is not None
        if usable and (s.layer not in by_layer or _val(s) > _val(by_layer[s.layer])):
            by_layer[s.layer] = s
    if len(by_layer) < 2:
        return None
    final = by_layer.get(FINAL_LAYER)
    # A tie on validation goes to the final layer: no intermediate one is ahead of it.
    top = max(by_layer.values(), key=lambda s: (_val(s), s is final))
    top_val, final_val = _apart(top.val_accuracy, (final or top).val_accuracy)
    text = (
        f"The best layer on validation is {top.layer} ({top.label}, validation {top_val}, "
        f"{_test(top)})"
    )
    if final is None:
        return text + "."
    if top is final:
        return text + "; no intermediate layer beat the final one."
    against = (
        f"({FINAL_LAYER}: best validation {final_val} with {final.label}, "
        f"{_pct(final.top1)} on test)"
    )
    clear, paired = _on_test(top, final, n_boot)
    if clear:
        return text + f": an intermediate layer beat the final one {against}."
    return (
        text + f": an intermediate layer is ahead of the final one on validation {against}, "
        f"but the test images do not confirm it: {paired}."
    )


def crossover(summaries: list[MethodSummary]) -> tuple[int | None, list[tuple]]:
    """Per training-set size of a sweep: (size, best fine-tune, best probe), each chosen on
    validation; and the smallest size from which the fine-tune's validation accuracy is
    above the probe's at that size and every larger one (None: no crossover seen)."""
    sizes = sorted({s.train_size for s in summaries if s.train_size is not None})
    steps = []
    for size in sizes:
        at = [s for s in summaries if s.train_size == size]
        tune, probe = best(at, MethodKind.FINETUNE), best(at, MethodKind.PROBE)
        if tune and probe:
            steps.append((size, tune, probe))
    from_size = None
    for size, tune, probe in reversed(steps):
        if _val(tune) <= _val(probe):
            break
        from_size = size
    return from_size, steps


def _crossover_sentence(summaries: list[MethodSummary], n_boot: int) -> str | None:
    from_size, steps = crossover(summaries)
    if not steps:
        return None
    sizes = ", ".join(str(size) for size, _, _ in steps)
    if from_size is None:
        return (
            f"No crossover was seen in the sweep ({sizes} training images): the best "
            "fine-tune is ahead of the best probe on validation at some sizes, but not at the "
            "largest."
            if any(_val(t) > _val(p) for _, t, p in steps)
            else f"No crossover was seen in the sweep ({sizes} training images): the best "
            "probe stays ahead of the best fine-tune on validation at every size."
        )
    _, tune, probe = next(step for step in steps if step[0] == from_size)
    tune_val, probe_val = _apart(tune.val_accuracy, probe.val_accuracy)
    at = (
        f"at {from_size}, {tune.label} {tune_val} against {probe.label} {probe_val} "
        f"(test {_pct(tune.top1)} against {_pct(probe.top1)})"
    )
    # Ahead on validation by any gap is not yet a crossover: each size's lead must hold on test.
    unclear = [(size, _on_test(t, p, n_boot)) for size, t, p in steps if size >= from_size]
    unclear = [(size, paired) for size, (clear, paired) in unclear if not clear]
    if not unclear:
        return (
            f"Fine-tuning starts to pay off from {from_size} training images (sweep: {sizes}): "
            f"from there on the best fine-tune beats the best probe on validation; {at}."
        )
    doubts = "; ".join(f"at {size}, {paired}" for size, paired in unclear)
    return (
        f"The best fine-tune is ahead of the best probe on validation from {from_size} training "
        f"images on (sweep: {sizes}): {at}. The test images do not confirm a crossover: "
        f"{doubts}."
    )


def warnings_for(summaries: list[MethodSummary], n_val: int | None = None) -> list[str]:
    """One line per result that looks broken, with its likely causes. ``n_val``: the
    validation images (the data checks' count), by which a fine-tune's validation gaps are
    told from noise; None (not known): any gap counts."""
    lines = []
    for s in summaries:
        if s.kind == MethodKind.FINETUNE:
            lines += _finetune_warnings(s, n_val)
        elif any(r["params"].get("hit_iteration_limit") for r in s.rows):
            lines.append(
                f"{s.label} stopped at its iteration limit (max_iter) before converging: its "
                "score may be below what the head can reach. Raise max_iter in its grid, or "
                "standardise the features."
            )
        lines += _mixed_test_sets(s)
        lines += _one_class_level(s)
    lines += _test_size_warnings(summaries)
    return lines


def _one_class_level(s: MethodSummary) -> list[str]:
    """A line when a method's mean top-1 is no better than predicting the most common test
    class for every image (the heads' rule for val scores): the run's log said so about its
    val score, and the report, which outlives the log, showed the score without a word."""
    from featpipe.heads.selection import no_better_than_one_class

    found = no_better_than_one_class(s.top1, [np.asarray(r["test"]["y_true"]) for r in s.rows])
    if found is None:
        return []
    share, label = found
    return [
        f"{s.label} scores {_pct(s.top1)} on test, no better than predicting class "
        f"{s.rows[0]['classes'][int(label)]!r} for every test image ({_pct(share)}): the "
        "test split cannot tell it from a model that ignores the images. Check its warnings "
        "in the run's log (too few val rows to choose on, too few epochs, a learning rate too "
        "high)."
    ]


def _mixed_test_sets(s: MethodSummary) -> list[str]:
    """A line when a method's seeds tested different images (e.g. `featpipe probe` into one
    --run-dir from two stores, one --seed each): its mean top-1 then mixes test sets."""
    tested = {r["test"]["ids_sha256"] for r in s.rows}
    if len(tested) < 2:
        return []
    sizes = ", ".join(f"seed {r['seed']}: {counted(r['metrics']['n'], 'image')}" for r in s.rows)
    return [
        f"{s.label}: its seeds tested different test images ({sizes}), so its mean top-1 "
        "mixes test sets and its interval is taken at their sizes' harmonic mean. Run every "
        "seed on the same data (one store) to compare them."
    ]


def _finetune_warnings(s: MethodSummary, n_val: int | None) -> list[str]:
    """A line per seed that looks broken: one good seed does not vouch for the others."""
    return [line for row in s.rows if (line := _broken_seed(s, row, n_val))]


def _clearly_below(accuracy: float, reference: float, n_val: int | None) -> bool:
    """``clearly_below`` over ``n_val`` validation images (the rule heads' C paths use); any
    gap when ``n_val`` is not known."""
    return clearly_below(accuracy, reference, n_val) if n_val else accuracy < reference


def _broken_seed(s: MethodSummary, row: dict, n_val: int | None) -> str | None:
    history = row.get("history") or []
    if not history:
        return None
    start = history[0].get("val_accuracy")
    last = history[-1].get("val_accuracy")
    probe = history[0].get("probe") or {}
    probe_val = probe.get("val_accuracy") if isinstance(probe, dict) else None
    problems = []
    # A gap within validation noise is no sign of a broken fine-tune: 79.7 % against 79.9 %
    # (one image of the demo's validation split) was warned as one.
    dropped = start is not None and last is not None and _clearly_below(last, start, n_val)
    if dropped and len(history) > 1:
        problems.append(
            f"its last epoch ends below its own starting point on validation "
            f"({_pct(last)} after epoch {history[-1].get('epoch')}, {_pct(start)} at epoch 0)"
        )
    elif len(history) > 1 and row["params"].get("best_epoch") == 0 and probe_val is None:
        # From a trained probe (LP-FT) best epoch 0 keeps the probe: see kept_probe_notes.
        problems.append("no epoch improved on its starting point (best epoch 0)")
    end = row.get("val_accuracy")
    if probe_val is not None and end is not None and _clearly_below(end, probe_val, n_val):
        problems.append(
            f"it ends below the probe it started from ({_pct(end)} against the probe's "
            f"{_pct(probe_val)} on validation)"
        )
    if not problems:
        return None
    return (
        f"{s.label} (seed {row['seed']}) looks broken: {'; '.join(problems)}. "
        f"Likely causes: {_likely_causes(s, row)}."
    )


def kept_probe_notes(summaries: list[MethodSummary], n_val: int | None = None) -> list[str]:
    """A line per fine-tune that started from a trained probe (LP-FT) and kept it: no epoch
    beat the probe on validation and none fell clearly below it. Not broken (the run said
    "looks broken" for it), but its scores are the probe's, bought at fine-tuning's cost."""
    lines = []
    for s in summaries:
        if s.kind != MethodKind.FINETUNE:
            continue
        kept = [r for r in s.rows if _kept_probe(r) and not _broken_seed(s, r, n_val)]
        if not kept:
            continue
        seeds = listed([r["seed"] for r in kept], len(kept))
        probe = listed([_pct(r["history"][0]["probe"]["val_accuracy"]) for r in kept], len(kept))
        lines.append(
            f"{s.label} ({agrees(len(kept), 'seed', 'seeds')} {seeds}) kept the linear probe "
            f"it started from: no epoch beat its validation accuracy ({probe}), so its scores "
            "are the probe's at fine-tuning's cost. More epochs or another learning rate may "
            "let it improve."
        )
    return lines


def _kept_probe(row: dict) -> bool:
    history = row.get("history") or []
    probe = history[0].get("probe") if history else None
    return (
        len(history) > 1
        and isinstance(probe, dict)
        and probe.get("val_accuracy") is not None
        and row["params"].get("best_epoch") == 0
    )


def _likely_causes(s: MethodSummary, row: dict) -> str:
    params = row["params"]
    causes = []
    epochs = params.get("epochs")
    if epochs is None or epochs <= 5:
        causes.append(f"too few epochs ({epochs if epochs is not None else '?'})")
    if (s.mode or "").startswith("lpft"):
        lr = params.get("lr")
        scale = params.get("backbone_lr_scale")
        effective = lr * scale if lr is not None and scale is not None else lr
        causes.append(
            f"a learning rate too high for LP-FT (lr {effective:g}; LP-FT starts from a "
            "trained head and wants a small one)"
            if effective is not None
            else "a learning rate too high for LP-FT"
        )
        if params.get("max_grad_norm") is None:  # rows hold the cap the run trained with
            causes.append(
                "an uncapped gradient (max_grad_norm none: LP-FT's trained head amplifies "
                "every backbone step; 'auto' caps it at 10)"
            )
    augment = params.get("augment")
    if augment not in (None, "none", False) and _looks_like_digits(row):
        causes.append(
            f'augment left on for digits (augment = "{augment}": flips and crops turn digits '
            "into other digits)"
        )
    if not causes:
        causes = ["too few epochs", "a learning rate too high", "augmentation that changes labels"]
    return ", or ".join(causes)


def _looks_like_digits(row: dict) -> bool:
    return all(c.strip().isdigit() for c in row["classes"]) or "digits" in str(
        row["provenance"].get("source", "")
    )


def _test_size_warnings(summaries: list[MethodSummary]) -> list[str]:
    n = summaries[0].rows[0]["metrics"]["n"] if summaries else 0
    widths = [s.top1_ci[1] - s.top1_ci[0] for s in summaries if s.top1_ci]
    width = sum(widths) / len(widths) if widths else 0.0
    if n >= MIN_TEST and width <= WIDE_CI:
        return []
    # Without intervals (n_boot 0) there is no width to quote, only the count.
    spread = (
        f"the 95 % intervals on top-1 are {100 * width:.0f} points wide on average, too wide"
        if widths
        else "too few"
    )
    return [
        f"Only {counted(n, 'test image')}: {spread} to separate methods that differ by a few "
        "points. Use a larger test split (source.test_fraction) before reading the comparisons."
    ]
