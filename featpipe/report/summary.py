"""What every report shows, computed once from results rows: per-method summaries over seeds,
paired comparisons, the best methods and the provenance."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import TypeVar

import numpy as np

from featpipe.evaluate import (
    Comparison,
    aggregate_over_seeds,
    compare,
    holm,
    paired_score_bootstrap,
)
from featpipe.evaluate.compare import ALPHA
from featpipe.evaluate.metrics import (
    DEFAULT_BOOT,
    PREDICTION_METRICS,
    bootstrap_intervals,
    wilson_interval,
)
from featpipe.report.results import MethodKind

K = TypeVar("K")


@dataclass
class MethodSummary:
    """One method aggregated over its seeds (rows in seed order)."""

    method: str
    label: str
    kind: MethodKind
    backbone: str
    layer: str | None
    head: str | None
    mode: str | None
    rows: list[dict] = field(default_factory=list)
    # Resamples of the report's intervals (0: none): the run's n_boot now, which may differ
    # from the one its rows were computed with (a re-run at another n_boot reuses them). The
    # default is the runs' default: rows made at it are not resampled again.
    n_boot: int = DEFAULT_BOOT

    @property
    def seeds(self) -> list[int]:
        return [r["seed"] for r in self.rows]

    @property
    def aggregate(self) -> dict[str, dict[str, float]]:
        return aggregate_over_seeds([r["metrics"] for r in self.rows])

    @property
    def top1(self) -> float:
        return self.aggregate["top1"]["mean"]

    @property
    def top1_ci(self) -> tuple[float, float] | None:
        """The Wilson interval of the mean top-1 over seeds, on one seed's test images (None
        when ``n_boot`` is 0).

        Seeds test the same images: pooling their counts would count each image once per seed
        and narrow the interval by the square root of the number of seeds with no new test
        evidence. It is recomputed from the counts, not read from the rows, so rows written
        before the Wilson interval (a percentile bootstrap) are shown the same way.

        What it approximates: the mean is taken for one proportion, as if each image were right
        in every seed or in none, so it assumes the variance p(1 - p) / n. That is the most the
        seeds' mean can vary over test images: seeds that differ image by image make the
        per-image hit rate fractional, with less variance (then 13 % wider than a bootstrap of
        the mean over images, for 5 MLP seeds on 300 digits); seeds that agree image by image
        (one seed, a deterministic head) have exactly that variance, and the interval's ends
        then differ from a percentile bootstrap's only as Wilson's do (50 % of 200 images:
        43.1-56.9 against 43.0-57.0). Which seeds were drawn is not in it: the standard
        deviation over seeds shows that. A bootstrap over images would be exact but collapses
        near 100 % (see ``WILSON_METRICS``); a t-interval over seeds measures the seeds on
        these images only.

        Seeds that tested different images (a report warns) take the harmonic mean of their
        sets' sizes, whether the sets overlap or not: the mean's standard deviation is at most
        the mean of the seeds' own (any correlation), which is at most one proportion's at the
        mean over that many images (Cauchy-Schwarz, then p(1 - p) is concave). So the variance
        it assumes is at least the mean's, and the interval narrower than the smallest set's
        would be."""
        if not self.n_boot:
            return None
        n = [r["metrics"]["n"] for r in self.rows]
        return wilson_interval(self.top1, len(n) / sum(1 / k for k in n))

    def score_ci(self, metric: str) -> tuple[float, float] | None:
        """The 95 % bootstrap interval of a metric's mean over seeds (balanced accuracy, macro
        F1): the mean of the seeds' own, each on the same test images, as :attr:`top1_ci` is
        one seed's interval at the mean; None when ``n_boot`` is 0."""
        return self._score_cis.get(metric)

    @cached_property
    def _score_cis(self) -> dict[str, tuple[float, float]]:
        """:meth:`score_ci` of each metric: a row's stored intervals where it records that they
        were drawn at ``n_boot`` (``metrics.n_boot``), else computed from its test predictions
        at ``n_boot`` with its seed, which gives what a row made at ``n_boot`` holds. Rows
        written before ``metrics.n_boot`` are computed: a re-run at another n_boot may have
        reused them, so their intervals' n_boot is not known."""
        if not self.n_boot or not self.rows:
            return {}
        cis = [self._row_cis(r) for r in self.rows]
        means = {m: np.mean([c[m] for c in cis], axis=0) for m in PREDICTION_METRICS}
        return {m: (float(lo), float(hi)) for m, (lo, hi) in means.items()}

    def _row_cis(self, row: dict) -> dict[str, list[float]]:
        stored = row["metrics"]
        if stored.get("n_boot") == self.n_boot and stored["ci"].keys() >= set(PREDICTION_METRICS):
            return stored["ci"]
        test = row["test"]
        y_true, y_pred = np.asarray(test["y_true"]), np.asarray(test["y_pred"])
        return bootstrap_intervals(y_true, y_pred, len(row["classes"]), self.n_boot, row["seed"])

    def cost(self, name: str) -> float | None:
        """Mean of a cost field over seeds, as :func:`row_cost` counts it (None when no seed
        has it)."""
        values = [v for r in self.rows if (v := row_cost(r, name)) is not None]
        return float(np.mean(values)) if values else None

    @property
    def processes(self) -> int:
        """The most processes it ran on at once (a DDP fine-tune's ranks, in any piece of a
        run resumed on another number of them: its history's; else 1)."""
        sizes = [r.get("world_size") or 1 for r in self.rows]
        sizes += [h.get("world_size") or 1 for r in self.rows for h in r.get("history") or ()]
        return max(sizes)

    @property
    def devices(self) -> list[str]:
        """The devices its seeds' costs were measured on (rows may come from earlier runs)."""
        return sorted(
            {r["provenance"]["device"] for r in self.rows if r["provenance"].get("device")}
        )

    @property
    def train_size(self) -> int | None:
        """Training images of a data-size sweep (None: the whole train split)."""
        return self.rows[0].get("train_size")

    @property
    def params(self) -> dict:
        return self.rows[0]["params"]

    @property
    def val_accuracy(self) -> float | None:
        """Mean validation accuracy over seeds (None when no seed has one). NaN or infinity
        (in a results file featpipe did not write: it refuses them) counts as none: a NaN won
        or lost every choice on validation depending on run order."""
        values = [
            v for r in self.rows if (v := r.get("val_accuracy")) is not None and np.isfinite(v)
        ]
        return float(np.mean(values)) if values else None

    @property
    def seed_note(self) -> str | None:
        """Why the seeds show no spread: "deterministic" (the method has no randomness and
        ran once), "identical" (several seeds gave the same predictions), or None."""
        if all(r.get("deterministic") for r in self.rows):
            return "deterministic"
        preds = {tuple(r["test"]["y_pred"]) for r in self.rows}
        return "identical" if len(self.rows) > 1 and len(preds) == 1 else None


def row_cost(row: dict, name: str) -> float | None:
    """A cost field of a row in process-seconds: the seconds of a method run on several
    processes at once (``world_size``, a DDP fine-tune) count once per process, as a store's
    extraction sums the seconds of every process that filled it. Costs then compare the work
    done, however it was spread. Throughput is per process.

    A fine-tune resumed on another number of processes counts each piece's fit seconds at
    its own (``fit_process_seconds``); rows without it count them all at ``world_size``."""
    cost, n = row["cost"], row.get("world_size") or 1
    value, process = cost.get(name), cost.get("fit_process_seconds")
    if value is None or (n == 1 and process is None):
        return value
    fit = n * cost["fit_seconds"] if process is None else process
    if name == "total_seconds":
        return cost["extraction_seconds"] + fit + n * cost["predict_seconds"]
    if name == "fit_seconds":
        return fit
    if name == "predict_seconds":
        return n * value
    return value / n if name == "images_per_s" else value


def latest_rows(rows: list[dict]) -> list[dict]:
    """One row per (method, seed): the last one written, since a re-run with changed settings
    appends a new row beside the old one. Order of first appearance is kept."""
    latest: dict[tuple[str, int], dict] = {}
    for row in rows:
        latest[row["method"], row["seed"]] = row
    return list(latest.values())


def summarize(rows: list[dict], n_boot: int = DEFAULT_BOOT) -> list[MethodSummary]:
    """One summary per method, in the order methods first appear, with intervals from
    ``n_boot`` resamples (0: none)."""
    by_method: dict[str, MethodSummary] = {}
    for row in rows:
        summary = by_method.get(row["method"])
        if summary is None:
            summary = by_method[row["method"]] = MethodSummary(
                row["method"],
                row["label"],
                MethodKind(row["kind"]),
                row["backbone"],
                row["layer"],
                row["head"],
                row["mode"],
                n_boot=n_boot,
            )
        summary.rows.append(row)
    for summary in by_method.values():
        summary.rows.sort(key=lambda r: r["seed"])
    return list(by_method.values())


def best(summaries: list[MethodSummary], kind: MethodKind) -> MethodSummary | None:
    """The method of one kind with the highest mean validation accuracy: test accuracy never
    chooses (it is read once, for the methods chosen). Ties go to the method that comes first
    in the report (run order). None when no method of that kind has a validation score."""
    candidates = [s for s in summaries if s.kind == kind and s.val_accuracy is not None]
    return max(candidates, key=lambda s: s.val_accuracy) if candidates else None


def _correct(row: dict) -> np.ndarray:
    return np.asarray(row["test"]["y_true"]) == np.asarray(row["test"]["y_pred"])


@dataclass(frozen=True)
class PairedResult:
    comparison: Comparison
    seed: int
    # Balanced accuracy and macro F1 of A minus B, with paired bootstrap intervals drawn with
    # the comparison's seed: {metric: (difference, lo, hi)} (lo, hi None without a
    # bootstrap); empty unless asked for, or when the rows label the test images differently.
    scores: dict[str, tuple[float, float | None, float | None]] = field(default_factory=dict)


def _seed_pairs(a: MethodSummary, b: MethodSummary) -> list[tuple[dict, dict]]:
    """The rows of A and B to pair, lowest seed first: those of one seed, and a deterministic
    method's one row (it ran once, as seeds change nothing) with each row of the other."""
    if a.seed_note == "deterministic":
        return [(a.rows[0], row) for row in b.rows]
    if b.seed_note == "deterministic":
        return [(row, b.rows[0]) for row in a.rows]
    rows_b = {r["seed"]: r for r in b.rows}
    return [(row, rows_b[row["seed"]]) for row in a.rows if row["seed"] in rows_b]


def compare_pair(
    a: MethodSummary, b: MethodSummary, n_boot: int, with_scores: bool = False
) -> PairedResult | None:
    """A against B on the lowest seed both ran (any seed, for a deterministic method), if they
    tested the same images; ``with_scores`` adds balanced accuracy and macro F1."""
    for row_a, row_b in _seed_pairs(a, b):
        if row_a["test"]["ids_sha256"] == row_b["test"]["ids_sha256"]:
            seed = (row_b if a.seed_note == "deterministic" else row_a)["seed"]
            result = compare(
                a.label,
                _correct(row_a),
                b.label,
                _correct(row_b),
                cost_a=row_cost(row_a, "total_seconds"),
                cost_b=row_cost(row_b, "total_seconds"),
                n_boot=n_boot,
            )
            test_a, test_b = row_a["test"], row_b["test"]
            scores = {}
            if with_scores and test_a["y_true"] == test_b["y_true"]:
                y, pred_a, pred_b = test_a["y_true"], test_a["y_pred"], test_b["y_pred"]
                n_classes = len(row_a["classes"])
                scores = paired_score_bootstrap(y, pred_a, pred_b, n_classes, n_boot, seed)
            return PairedResult(result, seed, scores)
    return None


@dataclass
class Ties:
    """The methods compared with one on test: those tied with it, those clearly ahead of it,
    and those that could not be paired with it; ``compared``: how many were paired."""

    tied: list[MethodSummary]
    ahead: list[MethodSummary]
    unpaired: list[MethodSummary]
    compared: int


def ties(top: MethodSummary, others: list[MethodSummary], n_boot: int) -> Ties:
    """Each of ``others`` against ``top``: tied unless the difference is clear, as in the table
    of all pairs (:func:`clear_after_holm`): McNemar's p-values Holm-adjusted over every method
    compared with ``top``, and Newcombe's paired interval, where there is one, excluding 0.
    Uncorrected, some method of equal accuracy fell out of the tie by chance: of 12 methods on
    360 test images, in 25 to 31 % of simulated runs (2 % corrected)."""
    paired, unpaired = [], []
    for other in others:
        result = compare_pair(top, other, n_boot)
        if result is None:
            unpaired.append(other)
        else:
            paired.append((other, result.comparison))
    clear = clear_after_holm(dict(enumerate(c for _, c in paired)))
    tied = [s for i, (s, _) in enumerate(paired) if i not in clear]
    ahead = [s for i, (s, c) in enumerate(paired) if i in clear and c.difference < 0]
    return Ties(tied, ahead, unpaired, len(paired))


def tie_rule(n_boot: int, compared: int) -> str:
    """What :func:`ties` reads, in words, for ``compared`` methods compared with one, each
    with ``n_boot`` resamples."""
    holm = f", Holm-adjusted over the {compared} methods compared," if compared > 1 else ""
    if n_boot:
        return (
            "the paired interval of the difference includes 0, or McNemar's "
            f"test{holm} finds no difference"
        )
    return f"McNemar's test{holm} finds no difference; no interval, n_boot is 0"


def references(summaries: list[MethodSummary], n_boot: int = DEFAULT_BOOT) -> list[MethodSummary]:
    """The probes a fine-tune is compared with: the best probe (on validation) and the
    cheapest probe tied with it on test (:func:`ties`, among probes), when that is another."""
    top = best(summaries, MethodKind.PROBE)
    if top is None:
        return []
    probes = [s for s in summaries if s.kind == MethodKind.PROBE and s is not top]
    tied = [top, *ties(top, probes, n_boot).tied]
    costed = [s for s in tied if s.cost("total_seconds") is not None]  # 0 s is a cost
    cheapest = min(costed, key=lambda s: s.cost("total_seconds")) if costed else top
    return [top] if cheapest is top else [top, cheapest]


def comparisons(summaries: list[MethodSummary], n_boot: int = DEFAULT_BOOT) -> list[PairedResult]:
    """Each fine-tune against the best probe and the cheapest probe tied with it; without
    fine-tunes, those two probes against each other and the best probe against the runner-up
    on validation."""
    finetunes = [s for s in summaries if s.kind == MethodKind.FINETUNE]
    probes = references(summaries, n_boot)
    if not finetunes and probes:
        top = probes[0]
        others = sorted(
            (s for s in summaries if s.kind == MethodKind.PROBE and s is not top),
            key=lambda s: -(s.val_accuracy if s.val_accuracy is not None else -1),
        )
        extra = [s for s in others[:1] if all(s is not p for p in probes)]
        finetunes, probes = [top], [*probes[1:], *extra]
    pairs = (compare_pair(a, b, n_boot, with_scores=True) for a in finetunes for b in probes)
    return [p for p in pairs if p is not None]


def all_pairs(
    summaries: list[MethodSummary], n_boot: int = DEFAULT_BOOT
) -> dict[tuple[int, int], Comparison]:
    """Every ordered pair (i, j), i before j, of methods that tested the same images."""
    out = {}
    for i, a in enumerate(summaries):
        for j in range(i + 1, len(summaries)):
            paired = compare_pair(a, summaries[j], n_boot)
            if paired is not None:
                out[i, j] = paired.comparison
    return out


def clear_after_holm(matrix: dict[K, Comparison]) -> set[K]:
    """The keys of the comparisons in ``matrix`` that differ clearly once McNemar's p-values
    are Holm-adjusted over all of them (many pairs, many chances of a false call), with the
    paired interval, where there is one, excluding zero as well."""
    keys = list(matrix)
    adjusted = holm([matrix[k].mcnemar.p_value for k in keys])
    return {
        k
        for k, p in zip(keys, adjusted, strict=True)
        if p < ALPHA and (matrix[k].ci_low is None or matrix[k].distinguishable)
    }


def cost_devices(summaries: list[MethodSummary]) -> dict[str, list[str]]:
    """Each device costs were measured on, with the methods measured there."""
    out: dict[str, list[str]] = {}
    for s in summaries:
        for device in s.devices:
            out.setdefault(device, []).append(s.label)
    return out


def provenance(rows: list[dict]) -> list[tuple[str, str]]:
    """(item, value) lines: each distinct backbone, source, version set and device. An item
    a row does not have (null: a fine-tune's store) gets no line: "store null" beside the
    probes' store read as if a store were missing."""
    seen: dict[str, list[str]] = {}
    for row in rows:
        prov = row["provenance"]
        for key, value in prov.items():
            if value is None:
                continue
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            if text not in seen.setdefault(key, []):
                seen[key].append(text)
    return [(key, value) for key, values in seen.items() for value in values]
