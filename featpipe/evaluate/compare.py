"""Paired comparison of two methods on the same test images: Newcombe's interval and McNemar."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from featpipe.errors import ConfigError
from featpipe.evaluate.metrics import (
    DEFAULT_BOOT,
    PREDICTION_METRICS,
    check_n_boot,
    resampled_scores,
    resamples,
    wilson_interval,
)

# Below this many discordant pairs the chi-square approximation is poor; use the exact test.
EXACT_BELOW = 25
# Level at which a paired comparison calls a difference real (with the 95 % interval).
ALPHA = 0.05
TINY_P = 1e-300  # below this a p-value is shown as "<1e-300" (floats underflow near 1e-308)


@dataclass(frozen=True)
class McNemarResult:
    """``b``: A right and B wrong; ``c``: A wrong and B right."""

    b: int
    c: int
    statistic: float
    p_value: float
    method: str  # "exact" (binomial) or "chi2" (with continuity correction)


def mcnemar(
    correct_a: np.ndarray, correct_b: np.ndarray, exact_below: int = EXACT_BELOW
) -> McNemarResult:
    """McNemar's test on paired correctness: exact two-sided binomial when the discordant count
    ``b + c`` is below ``exact_below``, else chi-square (1 dof) with continuity correction,
    none when ``b == c`` (as R's ``mcnemar.test``: taking 1 off a gap of 0 gave 13 against 13
    p=0.84, where 12 against 12 gets the exact test's 1.0)."""
    a, b_ = _paired(correct_a, correct_b)
    b = int(np.sum(a & ~b_))
    c = int(np.sum(~a & b_))
    n = b + c
    if n == 0:
        return McNemarResult(b, c, 0.0, 1.0, "exact")
    if n < exact_below:
        p = min(1.0, 2.0 * float(stats.binom.cdf(min(b, c), n, 0.5)))
        return McNemarResult(b, c, float(min(b, c)), p, "exact")
    statistic = max(abs(b - c) - 1, 0) ** 2 / n
    return McNemarResult(b, c, float(statistic), float(stats.chi2.sf(statistic, 1)), "chi2")


def paired_bootstrap(
    correct_a: np.ndarray,
    correct_b: np.ndarray,
    n_boot: int = DEFAULT_BOOT,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float | None, float | None]:
    """Accuracy difference A - B and its percentile interval, resampling test images jointly
    so that each resample keeps the pairing. ``n_boot=0`` gives no interval: (diff, None,
    None). Degenerate at small n (all right for A, all wrong for B: 100 to 100); reports use
    :func:`newcombe_interval`."""
    a, b = _paired(correct_a, correct_b)
    diff = a.astype(np.float64) - b.astype(np.float64)
    check_n_boot(n_boot)
    if n_boot == 0:
        return float(diff.mean()), None, None
    means = np.concatenate([diff[idx].mean(axis=1) for idx in resamples(len(diff), n_boot, seed)])
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(diff.mean()), float(lo), float(hi)


def newcombe_interval(correct_a: np.ndarray, correct_b: np.ndarray) -> tuple[float, float]:
    """The 95 % interval of the accuracy difference A - B on the same test images: Newcombe's
    score interval for paired proportions (1998, method 10), each accuracy's Wilson interval
    combined through their correlation phi (continuity-corrected when positive).

    A percentile bootstrap of the difference collapses at small n (8 images all right for A
    and all wrong for B gave 100.0 to 100.0); this interval keeps a width there."""
    a, b = _paired(correct_a, correct_b)
    both, only_a = int(np.sum(a & b)), int(np.sum(a & ~b))
    only_b, neither = int(np.sum(~a & b)), int(np.sum(~a & ~b))
    n = len(a)
    p1, p2 = (both + only_a) / n, (both + only_b) / n
    (l1, u1), (l2, u2) = wilson_interval(p1, n), wilson_interval(p2, n)
    margins = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    cross = both * neither - only_a * only_b
    # phi is 0 when a margin is empty; a positive cross product loses n/2 (not below 0).
    if margins == 0:
        phi = 0.0
    elif cross > 0:
        phi = max(cross - n / 2, 0.0) / math.sqrt(margins)
    else:
        phi = cross / math.sqrt(margins)
    below = math.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0))
    above = math.sqrt(max((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2, 0))
    diff = p1 - p2
    return max(-1.0, diff - below), min(1.0, diff + above)


def paired_score_bootstrap(
    y_true: np.ndarray,
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    n_classes: int,
    n_boot: int = DEFAULT_BOOT,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, tuple[float, float | None, float | None]]:
    """Balanced accuracy and macro F1 of A minus B on the same test images, each with its
    percentile interval from the resamples :func:`paired_bootstrap` draws with this seed
    (so the two intervals share their test images). No closed form applies to these scores;
    the accuracy difference has :func:`newcombe_interval`."""
    y, a, b = (np.asarray(v) for v in (y_true, pred_a, pred_b))
    if not y.shape == a.shape == b.shape or y.ndim != 1 or not len(y):
        raise ConfigError(
            "A paired comparison needs true labels and two methods' predictions over the same "
            f"test images, 1-d and of equal length; got shapes {y.shape}, {a.shape}, {b.shape}."
        )
    values = np.concatenate([y, a, b])
    if (
        not np.issubdtype(values.dtype, np.integer)
        or not 0 <= values.min() <= values.max() < n_classes
    ):
        raise ConfigError(
            f"Labels and predictions must be integer class indices 0..{n_classes - 1}; got "
            f"{values.dtype} values {values.min()}..{values.max()}."
        )
    check_n_boot(n_boot)
    whole = [resampled_scores(y, p, np.arange(len(y))[None], n_classes) for p in (a, b)]
    out = {m: (float(whole[0][m][0] - whole[1][m][0]), None, None) for m in PREDICTION_METRICS}
    if n_boot == 0:
        return out
    draws = {m: [] for m in PREDICTION_METRICS}
    for idx in resamples(len(y), n_boot, seed):
        sa, sb = (resampled_scores(y, p, idx, n_classes) for p in (a, b))
        for m in PREDICTION_METRICS:
            draws[m].append(sa[m] - sb[m])
    alpha = (1 - level) / 2
    for m in PREDICTION_METRICS:
        lo, hi = np.nanquantile(np.concatenate(draws[m]), [alpha, 1 - alpha])
        out[m] = (out[m][0], float(lo), float(hi))
    return out


def _paired(correct_a, correct_b) -> tuple[np.ndarray, np.ndarray]:
    a, b = _correctness(correct_a), _correctness(correct_b)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ConfigError(
            f"A paired comparison needs two equal-length 1-d correctness vectors over the same "
            f"test images; got shapes {a.shape} and {b.shape}."
        )
    return a, b


def _correctness(values) -> np.ndarray:
    """Per-image correctness as booleans: True/False or 1/0 only. Anything else (class indices
    passed for correctness, NaN for a missing prediction) would read as right wherever it is
    not 0."""
    array = np.asarray(values)
    if array.dtype != bool and array.size:
        odd = array[~np.isin(array, (0, 1))]
        if odd.size:
            raise ConfigError(
                "A paired comparison needs each method's correctness per test image, True/False "
                f"or 1/0; got values such as {odd.ravel()[:1].tolist()[0]!r}. Pass "
                "y_pred == y_true."
            )
    return array.astype(bool)


@dataclass(frozen=True)
class Comparison:
    """A minus B on the same test images; differences are fractions (0.031 = 3.1 points).
    ``ci_low``/``ci_high``: Newcombe's 95 % interval, None when a run has no intervals
    (``n_boot=0``)."""

    name_a: str
    name_b: str
    difference: float
    ci_low: float | None
    ci_high: float | None
    mcnemar: McNemarResult
    cost_ratio: float | None  # cost of A / cost of B, when both are known

    @property
    def distinguishable(self) -> bool:
        """The interval excludes zero (False without an interval)."""
        return self.ci_low is not None and (self.ci_low > 0 or self.ci_high < 0)

    @property
    def significant(self) -> bool:
        """McNemar's test rejects equal accuracy at level ``ALPHA``."""
        return self.mcnemar.p_value < ALPHA

    @property
    def verdict(self) -> str:
        """The call: "clear" when the interval (if any) and McNemar's test both find a difference,
        "none" when neither does, "mixed" when they disagree."""
        tests = [self.significant] + ([self.distinguishable] if self.ci_low is not None else [])
        return "clear" if all(tests) else "none" if not any(tests) else "mixed"

    def sentence(self) -> str:
        """E.g. "fine-tuning (full) beats logistic regression on layer pooled by 3.1 points
        (95 % CI 2.2 to 4.0, McNemar p=0.0012) at 46 times the cost". "beats" and "trails"
        need both the interval and McNemar's test; when they disagree the sentence says so."""
        pts = 100 * self.difference
        d = point_decimals(pts)
        p = f"McNemar p{_p_figure(self.mcnemar.p_value)}"
        if self.ci_low is None:
            figures = p
        else:  # a trailing gap's interval is stated as positive points like the gap itself
            lo, hi = (self.ci_low, self.ci_high)
            if pts < 0 and self.verdict != "none":
                lo, hi = -hi, -lo
            figures = f"95 % CI {bound_figure(100 * lo, d)} to {bound_figure(100 * hi, d)}, {p}"
        a, b = self.name_a, self.name_b
        if self.verdict == "none":
            text = (
                f"{a} is not distinguishable from {b} (difference {pts:+.{d}f} points, {figures})"
            )
        elif self.verdict == "clear":
            verb = "beats" if pts > 0 else "trails"
            text = f"{a} {verb} {b} by {abs(pts):.{d}f} points ({figures})"
        else:
            doubt = (
                "McNemar's test does not confirm it"
                if self.distinguishable
                else "the 95 % interval includes zero"
            )
            side = "ahead of" if pts > 0 else "behind"
            text = f"{a} is {abs(pts):.{d}f} points {side} {b}, but {doubt} ({figures})"
        if self.cost_ratio is not None:
            text += f" at {_format_ratio(self.cost_ratio)} the cost"
        return text


def compare(
    name_a: str,
    correct_a: np.ndarray,
    name_b: str,
    correct_b: np.ndarray,
    *,
    cost_a: float | None = None,
    cost_b: float | None = None,
    n_boot: int = DEFAULT_BOOT,
    seed: int | None = None,
) -> Comparison:
    """Compare two methods from their per-image correctness on the same test images: the
    difference with Newcombe's interval (none when ``n_boot`` is 0, as for every interval of
    a run without one) and McNemar's test. Both are exact, drawing nothing at random: a
    ``seed`` (kept so that old calls run) changes nothing and is warned about."""
    if seed is not None:
        warnings.warn(
            f"compare() ignores seed={seed!r}: Newcombe's interval and McNemar's test draw "
            "nothing at random, so every seed gives the same result. Leave seed out (it will "
            "be removed).",
            FutureWarning,
            stacklevel=2,
        )
    a, b = _paired(correct_a, correct_b)
    check_n_boot(n_boot)
    diff = float((a.astype(np.float64) - b.astype(np.float64)).mean())
    lo, hi = newcombe_interval(a, b) if n_boot else (None, None)
    ratio = cost_a / cost_b if cost_a and cost_b else None
    return Comparison(name_a, name_b, diff, lo, hi, mcnemar(correct_a, correct_b), ratio)


def point_decimals(points: float) -> int:
    """Decimals for a gap of ``points``: 1, or as many as show two significant digits of a
    gap that one decimal would round to 0.0 (a clear 0.04-point gap on a large test set)."""
    if points == 0 or abs(points) >= 0.05:
        return 1
    return 1 - math.floor(math.log10(abs(points)))


def bound_figure(points: float, decimals: int) -> str:
    """An interval bound of ``points`` with at least ``decimals`` (its gap's), and more where
    they would round a bound that is not 0 to 0.0 (an interval excluding 0 by 0.02 points read
    "0.0 to 1.5" beside "McNemar's test does not confirm it"); 0 never prints as -0.0."""
    return f"{points + 0.0:.{max(decimals, point_decimals(points))}f}"


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of ``p_values`` (one family of tests), in their order: an
    adjusted p below ``ALPHA`` keeps the chance of any false call among them at ``ALPHA``."""
    order = np.argsort(p_values, kind="stable")
    m, running, adjusted = len(order), 0.0, [0.0] * len(order)
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p_values[i])))
        adjusted[i] = running
    return adjusted


def format_p(p: float) -> str:
    """A p-value with two significant digits (``"0.0031"``, ``"3.1e-05"``), or as many more
    as keep it off the ``ALPHA`` line (0.0496 and 0.0504, 0.04996 and 0.05004, never 0.050
    for a p on either side)."""
    for digits in range(2, 17):
        text = f"{p:#.{digits}g}"
        if float(text) != ALPHA or p == ALPHA:
            return text
    return text


def _p_figure(p: float) -> str:
    """``=0.0012``, or ``<1e-300`` for a p-value below what a float holds well: the chi-square
    tail of thousands of discordant pairs underflows to 0.0, and p is never 0."""
    return f"<{TINY_P:.0e}" if p < TINY_P else f"={format_p(p)}"


def _format_ratio(ratio: float) -> str:
    if ratio >= 10:
        return f"{ratio:.0f} times"
    if ratio >= 1:
        return f"{ratio:.1f} times"
    return f"{ratio:.2g} times"
