"""One metric function for every method: accuracy, calibration, confusion, 95 % intervals."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from scipy.stats import norm

from featpipe.errors import ConfigError
from featpipe.validation import is_count

ECE_BINS = 15
CI_LEVEL = 0.95
# Hit rates over test rows get a Wilson interval (a percentile bootstrap of a proportion near
# 1 collapses: 20 of 20 right gave 100.0-100.0); the other metrics get a percentile bootstrap,
# each a function of the resampled test rows.
WILSON_METRICS = ("top1", "top5")
BOOTSTRAP_METRICS = ("balanced_accuracy", "macro_f1", "log_loss")
# Those of them that predictions alone give (log loss needs probabilities, which rows do not
# keep): a report can draw their intervals again from a row's test predictions.
PREDICTION_METRICS = ("balanced_accuracy", "macro_f1")
# Resamples of a run's intervals unless its config sets n_boot: the default's one home (the
# pipeline option, plans and reports read it; job hashes do not, see jobs.HASHED_N_BOOT).
DEFAULT_BOOT = 1000
_EPS = 1e-15
_BOOT_BATCH = 100  # resamples per vectorised step, to bound memory on large test sets


def clearly_below(accuracy: float, reference: float, n: int) -> bool:
    """Below ``reference`` by more than two standard errors of an accuracy over ``n`` images
    (at least one image's worth): the noise rule for validation accuracies, which have no
    per-image predictions to pair."""
    se = max(math.sqrt(reference * (1 - reference) / n), 1 / n)
    return accuracy < reference - 2 * se


def _check_inputs(y_true, proba, classes) -> tuple[np.ndarray, np.ndarray, list[str]]:
    y = np.asarray(y_true)
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2:
        raise ConfigError(f"proba must be a 2-d (n_samples, n_classes) array; got shape {p.shape}.")
    if y.ndim != 1 or len(y) != len(p):
        raise ConfigError(
            f"y_true must be 1-d with one label per row of proba ({len(p)}); got shape {y.shape}."
        )
    if len(y) == 0:
        raise ConfigError("Cannot compute metrics on an empty test set.")
    if not np.issubdtype(y.dtype, np.integer):
        raise ConfigError(
            f"y_true must hold integer class indices; got dtype {y.dtype}. "
            "Map names to indices with the store's class list."
        )
    n_classes = p.shape[1]
    if y.min() < 0 or y.max() >= n_classes:
        raise ConfigError(
            f"y_true holds labels {y.min()}..{y.max()} but proba has {n_classes} columns."
        )
    if classes is None:
        classes = [str(i) for i in range(n_classes)]
    elif len(classes) != n_classes:
        raise ConfigError(f"{len(classes)} class names for {n_classes} proba columns.")
    elif len(set(classes)) < len(classes):  # per-class accuracy is keyed by name
        twice = next(c for i, c in enumerate(classes) if c in classes[:i])
        raise ConfigError(f"Class name {twice!r} is given twice; name each class once.")
    if not np.isfinite(p).all() or (p < 0).any():
        raise ConfigError("proba must be finite and non-negative (probabilities, not scores).")
    # Some heads (e.g. SVM via Platt scaling) give rows that sum to 1 only approximately.
    p = p / np.clip(p.sum(axis=1, keepdims=True), _EPS, None)
    return y.astype(np.int64), p, list(classes)


MAX_BOOT = 100_000  # far past where a 95 % percentile interval stops moving; 1e12 ran for days
# The fewest resamples that leave one in each 2.5 % tail of a 95 % percentile interval: with
# fewer, its ends are the extreme resamples (n_boot 1 gave lo = hi), noise rather than 95 %.
MIN_BOOT = 40


def row_nll(p_true: np.ndarray) -> np.ndarray:
    """Each row's negative log likelihood from its true class's probability, clipped at
    1e-15 (a probability of 0 costs about 34.5, not infinity)."""
    return -np.log(np.clip(p_true, _EPS, None))


def check_n_boot(n_boot) -> None:
    """Bootstrap resamples: 0 (no intervals) or a whole number from ``MIN_BOOT`` to
    ``MAX_BOOT``."""
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise ConfigError(f"n_boot must be an integer >= 0 (0: no intervals); got {n_boot!r}.")
    if 0 < n_boot < MIN_BOOT:
        raise ConfigError(
            f"n_boot is {n_boot}; a 95 % interval needs at least {MIN_BOOT} resamples (fewer "
            "leave its ends to the most extreme ones). Give n_boot 0 (no intervals) or from "
            f"{MIN_BOOT} (the default is {DEFAULT_BOOT:,})."
        )
    if n_boot > MAX_BOOT:
        raise ConfigError(
            f"n_boot is {n_boot:,}; at most {MAX_BOOT:,} resamples are accepted (a 95 % interval "
            f"stops moving long before; the default is {DEFAULT_BOOT:,}). Give a smaller n_boot."
        )


def _check_pred(y_pred, n: int, n_classes: int) -> np.ndarray:
    pred = np.asarray(y_pred)
    if pred.shape != (n,) or not np.issubdtype(pred.dtype, np.integer):
        raise ConfigError(
            f"y_pred must hold one integer class index per test row ({n}); got shape "
            f"{pred.shape} and dtype {pred.dtype}."
        )
    if n and (pred.min() < 0 or pred.max() >= n_classes):
        raise ConfigError(f"y_pred holds {pred.min()}..{pred.max()}; valid: 0..{n_classes - 1}.")
    return pred.astype(np.int64)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts, rows = true class, columns = predicted class."""
    flat = np.asarray(y_true) * n_classes + np.asarray(y_pred)
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _scores_from_confusion(cm: np.ndarray) -> dict[str, np.ndarray]:
    """top-1, balanced accuracy and macro F1 from one (C, C) confusion."""
    return _scores(np.diagonal(cm), cm.sum(axis=1), cm.sum(axis=0))


def _scores(right: np.ndarray, support: np.ndarray, predicted: np.ndarray) -> dict:
    """top-1, balanced accuracy and macro F1 from per-class counts of right predictions, true
    rows and predicted rows, (C,) or stacked (B, C): what the confusion's scores need.

    Follows scikit-learn: balanced accuracy averages recall over classes present in y_true; macro
    F1 averages over classes present in y_true or y_pred, with 0 for an undefined F1.
    """
    right, support, predicted = (
        np.asarray(a, dtype=np.float64) for a in (right, support, predicted)
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, right / support, np.nan)
        f1 = np.where(support + predicted > 0, 2 * right / (support + predicted), np.nan)
        return {
            "top1": right.sum(axis=-1) / support.sum(axis=-1),
            "balanced_accuracy": np.nanmean(recall, axis=-1),
            "macro_f1": np.nanmean(f1, axis=-1),
        }


def resampled_scores(
    y: np.ndarray, pred: np.ndarray, idx: np.ndarray, n_classes: int
) -> dict[str, np.ndarray]:
    """:func:`_scores` of each resample of test rows, ``idx`` (B, n): per-class counts by one
    bincount over (resample, class) each, B x C cells (a confusion per resample is B x C x C:
    800 MB for 100 resamples of 1,000 classes)."""
    offset = np.arange(len(idx))[:, None] * n_classes
    size = len(idx) * n_classes

    def counts(classes: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        flat = (offset + classes).ravel()
        w = None if weights is None else weights.ravel()
        return np.bincount(flat, w, minlength=size).reshape(len(idx), n_classes)

    y_i, pred_i = y[idx], pred[idx]
    return _scores(counts(y_i, y_i == pred_i), counts(y_i), counts(pred_i))


def expected_calibration_error(
    y_true: Sequence[int] | np.ndarray, proba: np.ndarray, n_bins: int = ECE_BINS
) -> float:
    """ECE over ``n_bins`` equal-width confidence bins (lo, hi]: sum of bin weight times
    |accuracy - mean confidence| (Guo et al., 2017), confidence = the top probability."""
    if not is_count(n_bins):
        raise ConfigError(
            f"n_bins is the number of confidence bins, a whole number from 1; got {n_bins!r}. "
            f"Give e.g. {ECE_BINS} (the default)."
        )
    n_bins = int(n_bins)  # 10.0 is taken as 10
    y, p, _ = _check_inputs(y_true, proba, None)
    conf = p.max(axis=1)
    correct = p.argmax(axis=1) == y
    bins = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    acc_sum = np.bincount(bins, weights=correct, minlength=n_bins)
    conf_sum = np.bincount(bins, weights=conf, minlength=n_bins)
    return float(np.abs(acc_sum - conf_sum).sum() / len(y))


def wilson_interval(p: float, n: int) -> tuple[float, float]:
    """The 95 % Wilson score interval of a proportion ``p`` of ``n`` test rows (Wilson, 1927).

    ``p`` may be a mean over seeds (a fractional count); at ``p`` = 0 or 1 the interval still
    has a width, where a bootstrap's has none."""
    z = norm.ppf(1 - (1 - CI_LEVEL) / 2)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, float(centre - half)), min(1.0, float(centre + half))


def _percentile_ci(samples: np.ndarray) -> list[float]:
    alpha = (1 - CI_LEVEL) / 2
    lo, hi = np.nanquantile(samples, [alpha, 1 - alpha])
    return [float(lo), float(hi)]


def resamples(n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """``n_boot`` resamples of ``n`` test rows (drawn with replacement), (B, n) at a time:
    every interval with this seed, paired or not, draws the same test rows."""
    rng = np.random.default_rng(seed)
    for start in range(0, n_boot, _BOOT_BATCH):
        yield rng.integers(0, n, size=(min(_BOOT_BATCH, n_boot - start), n))


def bootstrap_intervals(
    y: np.ndarray,
    pred: np.ndarray,
    n_classes: int,
    n_boot: int,
    seed: int,
    nll: np.ndarray | None = None,
) -> dict[str, list[float]]:
    """Percentile intervals of balanced accuracy and macro F1 (and of log loss, given each test
    row's negative log likelihood ``nll``) from ``n_boot`` resamples of the test rows drawn with
    ``seed``: the same whether computed with the row (``compute_metrics``) or later from its
    predictions (a report at another ``n_boot``)."""
    names = [m for m in BOOTSTRAP_METRICS if m != "log_loss" or nll is not None]
    draws: dict[str, list[np.ndarray]] = {m: [] for m in names}
    for idx in resamples(len(y), n_boot, seed):
        scores = resampled_scores(y, pred, idx, n_classes)
        for name in PREDICTION_METRICS:
            draws[name].append(scores[name])
        if nll is not None:
            draws["log_loss"].append(nll[idx].mean(axis=1))
    return {m: _percentile_ci(np.concatenate(v)) for m, v in draws.items()}


def compute_metrics(
    y_true: Sequence[int] | np.ndarray,
    proba: np.ndarray,
    classes: Sequence[str] | None = None,
    n_boot: int = DEFAULT_BOOT,
    seed: int = 0,
    y_pred: Sequence[int] | np.ndarray | None = None,
) -> dict:
    """Every test metric of one method, as a JSON-serialisable dict.

    ``y_true`` holds class indices into the columns of ``proba`` (n, C). Returns ``n``, ``top1``,
    ``top5`` (only when more than 5 classes have test images or a score above 0; classes
    tied with the true one count ahead of it), ``balanced_accuracy``, ``macro_f1`` (both over
    the classes present, as scikit-learn), ``log_loss``, ``ece`` (15 bins), ``confusion``
    (C×C list, rows = true class), ``per_class_accuracy`` ({class: recall or None when it is
    absent from the test set}), ``ci`` ({metric: [lo, hi]}, 95 %: the Wilson score interval
    for top-1 and top-5, a percentile bootstrap over test rows for the others; empty when
    ``n_boot`` is 0) and ``n_boot`` (the resamples ``ci`` was drawn with: a report at the same
    number reuses it).

    ``y_pred`` are the method's own predictions (class indices), for heads whose ``predict``
    is not the argmax of the scores in ``proba`` (an SVM's ties); top-1, balanced accuracy,
    macro F1, the confusion matrix and per-class accuracy use them. Default: the argmax.
    """
    y, p, names = _check_inputs(y_true, proba, classes)
    check_n_boot(n_boot)
    n_classes = p.shape[1]
    pred = p.argmax(axis=1) if y_pred is None else _check_pred(y_pred, len(y), n_classes)
    cm = confusion_matrix(y, pred, n_classes)
    scores = {k: float(v) for k, v in _scores_from_confusion(cm).items()}
    nll = row_nll(p[np.arange(len(y)), y])
    top5_hit = None
    # Top-5 among 5 or fewer classes would be a trivial 100 %: a class with no test image
    # and no score above 0 (a probe's head never saw it: integer labels with gaps leave the
    # classes between them empty) is none to rank.
    ranked = (p > 0).any(axis=0) | (np.bincount(y, minlength=n_classes) > 0)
    if np.count_nonzero(ranked) > 5:
        # A hit when at most 5 classes, the true one included, score at least as high: ties
        # count against it. An arbitrary tie order would credit classes given no probability
        # (a kNN's zero-vote classes) and make top-5 depend on how classes are numbered.
        true_p = p[np.arange(len(y)), y]
        top5_hit = ((p >= true_p[:, None]).sum(axis=1) <= 5).astype(np.float64)
    support = cm.sum(axis=1)
    per_class = {
        name: (float(cm[i, i] / support[i]) if support[i] else None) for i, name in enumerate(names)
    }
    ci = {}
    if n_boot > 0:
        hits = {"top1": scores["top1"], "top5": None if top5_hit is None else top5_hit.mean()}
        ci = {m: list(wilson_interval(v, len(y))) for m, v in hits.items() if v is not None}
        ci.update(bootstrap_intervals(y, pred, n_classes, n_boot, seed, nll))
    out = {
        "n": len(y),
        "top1": scores["top1"],
        **({"top5": float(top5_hit.mean())} if top5_hit is not None else {}),
        "balanced_accuracy": scores["balanced_accuracy"],
        "macro_f1": scores["macro_f1"],
        "log_loss": float(nll.mean()),
        "ece": expected_calibration_error(y, p),
        "confusion": cm.tolist(),
        "per_class_accuracy": per_class,
        "ci": ci,
        "n_boot": int(n_boot),
    }
    return out


SCALAR_METRICS = ("top1", "top5", "balanced_accuracy", "macro_f1", "log_loss", "ece")


def aggregate_over_seeds(metrics: Sequence[dict]) -> dict[str, dict[str, float]]:
    """Mean and sample standard deviation (ddof=1; 0 for one seed) of each scalar metric."""
    if not metrics:
        raise ConfigError("aggregate_over_seeds needs at least one metrics dict.")
    out = {}
    for name in SCALAR_METRICS:
        values = [m[name] for m in metrics if m.get(name) is not None]
        if not values:
            continue
        std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        out[name] = {"mean": float(np.mean(values)), "std": std, "n": len(values)}
    return out
