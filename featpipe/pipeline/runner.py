"""Run a declared experiment: extract, fit every head, fine-tune, evaluate, write the report.

The whole plan is checked first (see validate.py), so a bad value fails before any compute.
Resumable at two levels: feature stores come from extract's cache (an interrupted extraction
resumes its missing chunks), and a method whose (method, seed, config hash) row is already in
results.jsonl is skipped, so an interrupted run picks up at the first unfinished method.
The run folder's plan.json lists the rows of the current config; reports use only those.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from featpipe.data import ImageSource, open_source, subsample
from featpipe.data.unreadable import unreadable_images, without
from featpipe.evaluate import Timer, compute_metrics, measure
from featpipe.interrupt import Interrupted
from featpipe.pipeline.config import DEFAULT_FRACTIONS
from featpipe.pipeline.validate import check_grids, check_models
from featpipe.provenance import plain, versions
from featpipe.report import (
    RESULTS_FILE,
    PlannedRun,
    RunPlan,
    append_result,
    ids_sha256,
    read_results,
    write_plan,
    write_report,
)
from featpipe.report.results import SCHEMA_VERSION, write_text_atomic

HEAD_LABELS = {
    "logreg": "logistic regression",
    "linear_svm": "linear SVM",
    "rbf_svm": "RBF SVM",
    "mlp": "MLP",
    "knn": "kNN",
}
# Sections of the config that change no result (where results go, how many workers).
_FINETUNE_NOT_RESULT = ("modes", "backbones", "workers")


@dataclass(frozen=True)
class Method:
    """One (method, seed) job of a pipeline."""

    method: str
    kind: str
    label: str
    backbone: str
    seed: int
    config_hash: str
    layer: str | None = None
    head: str | None = None
    mode: str | None = None
    deterministic: bool = False  # the seed changes nothing: run once, with the first seed

    @property
    def key(self) -> tuple[str, int, str]:
        return self.method, self.seed, self.config_hash


def _hash(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def plan(config: dict, source_fingerprint: str, *, cv_selection: bool = False) -> list[Method]:
    """Every (method, seed) of a config in run order: probes per backbone, then fine-tunes.

    The config hash covers the data (its fingerprint: images, labels, splits) and each method's
    own settings, so changing one head's settings or adding a head redoes nothing else.

    A head without randomness (no seed parameter in the registry) chosen on a fixed validation
    split is deterministic: it runs once, with the first seed, whatever ``seeds`` lists. With
    ``cv_selection`` (no validation split) the seed draws the CV folds, so every head runs per
    seed. Heads whose seed reaches their estimator hash the parameter it sets."""
    from featpipe.heads.registry import seed_param

    features, finetune = config["features"], config["finetune"]
    several = len(set(features["backbones"]) | set(finetune["backbones"])) > 1
    suffix = (lambda bb: f" [{bb}]") if several else (lambda bb: "")
    common = {"data": source_fingerprint, "n_boot": config["n_boot"]}
    if features["decode"] != "exact":  # hashed only when set, so existing runs keep theirs
        common["decode"] = features["decode"]
    methods = []
    for bb in features["backbones"]:
        for layer in config["probes"]["layers"]:
            for head in config["probes"]["heads"]:
                settings = {
                    **common,
                    "backbone": bb,
                    "image_size": features["image_size"],
                    "dtype": features["dtype"],
                    "layer": layer,
                    "head": head,
                    "grid": config["probes"]["grids"].get(head),
                }
                seeded = seed_param(head)
                if seeded:
                    settings["seed_param"] = seeded
                deterministic = not seeded and not cv_selection
                seeds = config["seeds"][:1] if deterministic else config["seeds"]
                methods += [
                    Method(
                        f"{bb}/{head}@{layer}",
                        "probe",
                        f"{HEAD_LABELS.get(head, head)} on layer {layer}{suffix(bb)}",
                        bb,
                        seed,
                        _hash(settings),
                        layer=layer,
                        head=head,
                        deterministic=deterministic,
                    )
                    for seed in seeds
                ]
    tune = {k: v for k, v in finetune.items() if k not in _FINETUNE_NOT_RESULT}
    for bb in finetune["backbones"]:
        for mode in finetune["modes"]:
            settings = {**common, **tune, "backbone": bb, "mode": mode}
            methods += [
                Method(
                    f"{bb}/finetune:{mode}",
                    "finetune",
                    f"fine-tuning ({mode}){suffix(bb)}",
                    bb,
                    seed,
                    _hash(settings),
                    mode=mode,
                )
                for seed in config["seeds"]
            ]
    return methods


def open_pipeline_source(section: dict) -> ImageSource:
    """The source of a config's [source] table, split and limited as declared.

    A fraction the file leaves out (None) is its default where the source lacks that split,
    and says nothing where the source has it: only a fraction the user set is worth a
    warning that it is ignored."""
    fractions = {
        name: default if section[name] is None else section[name]
        for name, default in DEFAULT_FRACTIONS.items()
    }
    with warnings.catch_warnings():
        for name in DEFAULT_FRACTIONS:
            if section[name] is None:
                warnings.filterwarnings("ignore", f"{name}=.* is ignored", UserWarning)
        source = open_source(section["data"], **fractions, seed=section["split_seed"])
    if section["limits"]:
        source = subsample(source, dict(section["limits"]), seed=section["split_seed"])
    return source


def describe_device(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return f"cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"


def head_parameters(estimator) -> int:
    """Learned numbers in a fitted head's classifier (weights, biases, support vectors); kNN,
    which only stores its training set, has none."""
    clf = getattr(estimator, "classifier_", estimator)
    total = 0
    for name in ("coef_", "intercept_", "coefs_", "intercepts_", "dual_coef_", "support_vectors_"):
        value = getattr(clf, name, None)
        arrays = value if isinstance(value, list) else [value]
        total += sum(int(np.size(a)) for a in arrays if a is not None)
    return total


def probabilities(result) -> tuple[np.ndarray, bool]:
    """Test probabilities of a head, and whether they are probabilities at all. Heads with only
    a decision function (SVMs) get a softmax of it: fine for ranking (top-1, top-5), not for log
    loss or calibration, which the caller then leaves out."""
    scores = np.asarray(result.test_scores, dtype=np.float64)
    if hasattr(result.estimator, "predict_proba"):
        return scores, True
    if scores.ndim == 1:  # binary decision function: positive means class 1
        scores = np.stack([-scores, scores], axis=1)
    z = np.exp(scores - scores.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True), False


def _metrics(y, proba, classes, probabilistic: bool, n_boot: int, seed: int, y_pred=None) -> dict:
    metrics = compute_metrics(y, proba, classes, n_boot=n_boot, seed=seed, y_pred=y_pred)
    if not probabilistic:
        metrics["log_loss"] = metrics["ece"] = None
        metrics["ci"].pop("log_loss", None)
    return metrics


class PipelineRunner:
    """Runs one validated config (see :func:`featpipe.pipeline.config.load_config`)."""

    def __init__(
        self,
        config: dict,
        *,
        source: ImageSource | None = None,
        progress: bool = True,
        log: Callable[[str], None] = print,
    ):
        self.config = config
        self.source = source
        self.progress = progress
        self.log = log

    def run(self) -> Path:
        """Check the whole plan, run every unfinished method, then write the reports;
        returns the run folder."""
        methods, run_plan = self._prepare()
        results = self.run_dir / RESULTS_FILE
        rows = read_results(results, repair=True)
        done = _keys(rows)
        self.log(
            f"{self.config['name']}: {len(methods)} method runs, "
            f"{len(done & {m.key for m in methods})} already finished; results in {results}"
        )
        for m in methods:
            if m.key in done:
                self.log(f"reusing finished {m.label} (seed {m.seed})")
        todo = [m for m in methods if m.key not in done]
        try:
            stores = []
            for bb in self.config["features"]["backbones"]:
                probes = [m for m in todo if m.kind == "probe" and m.backbone == bb]
                if probes:
                    store, extraction = self._extract(bb)
                    stores.append(store)
                    for m in probes:
                        self._finish(results, rows, m, self._probe(m, store, extraction))
            tunes = [m for m in todo if m.kind == "finetune"]
            if tunes:
                source, skipped = self._finetune_source(stores)
            for m in tunes:
                self._finish(results, rows, m, self._finetune(m, source, skipped))
            write_report(self.run_dir, rows, run_plan)
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: finished rows are on disk
            finished = len(_keys(rows) & {m.key for m in methods})
            raise _interrupted(exc, finished, len(methods)) from None
        self.log(f"report: {self.run_dir / 'report.md'} and {self.run_dir / 'report.html'}")
        return self.run_dir

    def _prepare(self) -> tuple[list[Method], RunPlan]:
        """Check everything that can be checked before compute, then plan the run and save
        the plan beside its config; nothing is written unless the checks pass."""
        from featpipe.device import resolve_device

        cfg = self.config
        check_grids(cfg)  # before the source is even opened: the cheapest checks first
        self.device = str(resolve_device(cfg["device"]))
        if self.source is None:
            self.source = open_pipeline_source(cfg["source"])
        check_models(cfg)
        fingerprint = self.source.fingerprint(content=cfg["source"]["hash_contents"])
        self.provenance = {
            "source": {"description": self.source.describe(), "fingerprint": fingerprint},
            "versions": versions(),
            "device": describe_device(self.device),
        }
        cv_selection = len(self.source.indices("val")) == 0
        methods = plan(cfg, fingerprint, cv_selection=cv_selection)
        run_plan = RunPlan(
            cfg["name"],
            [
                PlannedRun(m.method, m.seed, m.config_hash, m.label, m.deterministic)
                for m in methods
            ],
            n_boot=cfg["n_boot"],
            source_fingerprint=fingerprint,
        )
        self.run_dir = Path(cfg["out"])
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.run_dir / "config.json", json.dumps(cfg, indent=2) + "\n")
        write_plan(self.run_dir, run_plan)
        return methods, run_plan

    def _finish(self, results: Path, rows: list[dict], m: Method, row: dict) -> None:
        """Record a finished method at once, so that an interruption loses only the running one."""
        append_result(results, row)
        rows.append(row)
        self.log(
            f"{m.label}, seed {m.seed}: top-1 {100 * row['metrics']['top1']:.1f} % "
            f"(fit {row['cost']['fit_seconds']:.1f} s)"
        )

    # ------------------------------------------------------------ probes

    def _extract(self, backbone: str):
        from featpipe.extract import extract

        features = self.config["features"]
        with measure(self.device) as cost:
            store = extract(
                self.source,
                backbone,
                features["layers"],
                cache_dir=features["cache_dir"],
                dtype=features["dtype"],
                batch_size=features["batch_size"],
                workers=features["workers"],
                device=self.config["device"],
                image_size=features["image_size"],
                progress=self.progress,
                hash_contents=self.config["source"]["hash_contents"],
                torch_compile=features["compile"],
                on_error=features["on_error"],
                decode=features["decode"],
            )
        # The store's cost: every run that built it, summed (also when reused or resumed).
        reused = bool((store.extraction or {}).get("reused"))
        stats = {**(store.attrs.get("extraction") or {}), "reused": reused}
        stats["peak_host_bytes"] = cost.peak_host_bytes
        stats["peak_device_bytes"] = cost.peak_device_bytes
        verb = "reused" if stats.get("reused") else "extracted"
        self.log(f"features {verb}: {store.path} ({stats.get('seconds', 0.0):.1f} s)")
        return store, stats

    def _probe(self, m: Method, store, extraction: dict) -> dict:
        from featpipe.heads import select_and_fit

        with measure(self.device) as cost:
            result = select_and_fit(
                m.head,
                store,
                layer=m.layer,
                seed=m.seed,
                device=self.device,
                grid=self.config["probes"]["grids"].get(m.head),
                progress=self.progress,
            )
        if result.test_scores is None:
            from featpipe.errors import ConfigError

            raise ConfigError(
                f"The source has no test rows, so {m.label} cannot be evaluated; "
                "set source.test_fraction > 0 or give a test split."
            )
        proba, probabilistic = probabilities(result)
        y = np.asarray(result.test_labels)
        # The head's own predictions: an SVM's predict is not the argmax of its decision
        # function on ties, and selection and test_accuracy use predict.
        y_pred = np.asarray(result.test_pred)
        metrics = _metrics(
            y, proba, store.classes, probabilistic, self.config["n_boot"], m.seed, y_pred
        )
        n_test = len(y)
        ext_seconds = float(extraction.get("seconds", 0.0))
        per_image = ext_seconds / extraction["images"] if extraction.get("images") else 0.0
        predict = float(result.predict_seconds or 0.0)
        fit = float(result.select_seconds + result.fit_seconds)
        return self._row(
            m,
            store.classes,
            metrics,
            y_pred,
            y,
            result.test_ids,
            val_accuracy=result.val_accuracy,
            params={k: plain(v) for k, v in result.params.items()},
            curve=[
                {"params": {k: plain(v) for k, v in p.items()}, "score": s} for p, s in result.curve
            ],
            history=None,
            cost={
                "extraction_seconds": ext_seconds,
                "extraction_reused": bool(extraction.get("reused", False)),
                "extraction_peak_host_bytes": extraction.get("peak_host_bytes"),
                "fit_seconds": fit,
                "predict_seconds": predict,
                "total_seconds": ext_seconds + fit + predict,
                "images_per_s": n_test / (per_image * n_test + predict) if predict else None,
                "peak_host_bytes": cost.peak_host_bytes,
                "peak_device_bytes": cost.peak_device_bytes,
                "trainable_params": head_parameters(result.estimator),
            },
            provenance={
                "backbone": store.attrs.get("backbone"),
                "store": {"path": str(store.path), "key": store.key},
                "image_size": self.config["features"]["image_size"],
                "skipped": skip_summary(store.skipped()),
            },
            extra_params={"selection": result.selection, "probabilistic": probabilistic},
        )

    # ------------------------------------------------------------ fine-tuning

    def _finetune_source(self, stores: list) -> tuple[ImageSource, dict[str, str]]:
        """The source fine-tunes train and are tested on, and the images it leaves out: those
        the feature stores skipped, so that probes and fine-tunes are tested on the same
        images (comparisons pair them). With no store opened now (no probe to run), every
        image is decoded once to find them, by the same rules as extraction."""
        on_error = self.config["features"]["on_error"]
        if stores:
            skipped = {sid: why for store in stores for sid, why in store.skipped().items()}
        else:
            skipped = unreadable_images(
                self.source,
                on_error,
                workers=self.config["finetune"]["workers"],
                progress=self.progress,
            )
        if skipped:
            self.log(f"fine-tuning leaves out {len(skipped)} unreadable images")
        return without(self.source, skipped), skipped

    def _finetune(self, m: Method, source: ImageSource, skipped: dict[str, str]) -> dict:
        from featpipe.finetune import FineTuner

        settings = {
            k: v for k, v in self.config["finetune"].items() if k not in ("modes", "backbones")
        }
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in m.backbone)
        tuner = FineTuner(
            m.backbone,
            mode=m.mode,
            seed=m.seed,
            device=self.config["device"],
            # Keyed by the config hash: an interrupted fine-tune resumes from its last.pt, a
            # changed one starts afresh beside it.
            run_dir=self.run_dir / "finetune" / f"{safe}-{m.mode.replace(':', '')}-{m.seed}-"
            f"{m.config_hash}",
            verbose=2 if self.progress else 0,
            decode=self.config["features"]["decode"],
            **settings,
        )
        with measure(self.device) as cost:
            tuner.fit(source)
            with Timer() as predict:
                proba = tuner.predict_proba("test")
        rows = source.indices("test")
        y = np.asarray(source.labels)[rows]
        metrics = _metrics(y, proba, source.classes, True, self.config["n_boot"], m.seed)
        return self._row(
            m,
            list(source.classes),
            metrics,
            proba.argmax(axis=1),
            y,
            [source.ids[i] for i in rows],
            val_accuracy=float(tuner.best_score_[0]),
            params={**settings, "best_epoch": int(tuner.best_epoch_)},
            curve=None,
            history=[{k: plain(v) for k, v in h.items()} for h in tuner.history_],
            cost={
                "extraction_seconds": 0.0,
                "extraction_reused": False,
                "fit_seconds": tuner.fit_seconds_,  # every resumed piece, not only this one
                "predict_seconds": predict.seconds,
                "total_seconds": tuner.fit_seconds_ + predict.seconds,
                "images_per_s": len(y) / predict.seconds if predict.seconds else None,
                "peak_host_bytes": cost.peak_host_bytes,
                "peak_device_bytes": cost.peak_device_bytes,
                "trainable_params": int(tuner.trainable_params_),
            },
            provenance={
                "backbone": tuner.backbone_.identity(),
                "store": None,
                "image_size": settings.get("image_size"),
                "skipped": skip_summary(skipped),
            },
            extra_params={},
        )

    # ------------------------------------------------------------ rows

    def _row(
        self,
        m: Method,
        classes,
        metrics: dict,
        y_pred,
        y_true,
        test_ids,
        *,
        val_accuracy,
        params: dict,
        curve,
        history,
        cost: dict,
        provenance: dict,
        extra_params: dict,
    ) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "run": self.config["name"],
            "method": m.method,
            "kind": m.kind,
            "label": m.label,
            "backbone": m.backbone,
            "layer": m.layer,
            "head": m.head,
            "mode": m.mode,
            "seed": m.seed,
            "deterministic": m.deterministic,
            "config_hash": m.config_hash,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "classes": list(classes),
            "metrics": metrics,
            "val_accuracy": None if val_accuracy is None else float(val_accuracy),
            "params": {**params, **extra_params},
            "curve": curve,
            "history": history,
            "cost": cost,
            "test": {
                "ids_sha256": ids_sha256(test_ids),
                "y_true": [int(v) for v in y_true],
                "y_pred": [int(v) for v in y_pred],
            },
            "provenance": {**self.provenance, **provenance},
        }


def skip_summary(skipped: dict[str, str], shown: int = 5) -> dict:
    """What a result row says about the images its method left out: how many, and the first
    few with their reasons."""
    return {"count": len(skipped), "first": dict(list(skipped.items())[:shown])}


def _keys(rows: list[dict]) -> set[tuple[str, int, str]]:
    return {(r["method"], r["seed"], r["config_hash"]) for r in rows}


def _interrupted(exc: KeyboardInterrupt, done: int, total: int) -> Interrupted:
    """The interruption told with how many method runs are done (and what the interrupted
    step said about its own state, e.g. extraction's chunks)."""
    stop = Interrupted.from_exception(exc)
    inner = stop.message.removeprefix("interrupted").strip(" :;")
    inner = inner.removesuffix("run the same command to resume").strip(" ;")
    detail = f" ({inner})" if inner else ""
    return stop.with_message(
        f"interrupted: {done} of {total} method runs done{detail}; run the same command to resume"
    )


def run_pipeline(
    config: dict,
    *,
    source: ImageSource | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Run a validated pipeline config (``source`` replaces its [source] table, e.g. for
    in-memory arrays); returns the run folder with results.jsonl, report.md and report.html."""
    return PipelineRunner(config, source=source, progress=progress, log=log).run()
