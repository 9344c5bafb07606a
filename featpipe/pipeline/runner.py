"""Run a declared experiment: extract, fit every head, fine-tune, evaluate, write the report.

Resumable at two levels: feature stores come from extract's cache (an interrupted extraction
resumes its missing chunks), and a method whose (method, seed, config hash) row is already in
results.jsonl is skipped, so an interrupted run picks up at the first unfinished method.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from featpipe.data import ImageSource, open_source, subsample
from featpipe.evaluate import Timer, compute_metrics, measure
from featpipe.report import RESULTS_FILE, append_result, ids_sha256, read_results, write_report
from featpipe.report.results import SCHEMA_VERSION

HEAD_LABELS = {
    "logreg": "logistic regression",
    "linear_svm": "linear SVM",
    "rbf_svm": "RBF SVM",
    "mlp": "MLP",
    "knn": "kNN",
}
_VERSIONED = ("featpipe", "torch", "torchvision", "timm", "scikit-learn", "numpy", "scipy", "h5py")
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

    @property
    def key(self) -> tuple[str, int, str]:
        return self.method, self.seed, self.config_hash


def _hash(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def plan(config: dict, source_fingerprint: str) -> list[Method]:
    """Every (method, seed) of a config in run order: probes per backbone, then fine-tunes.

    The config hash covers the data (its fingerprint: images, labels, splits) and each method's
    own settings, so changing one head's settings or adding a head redoes nothing else."""
    features, finetune = config["features"], config["finetune"]
    several = len(set(features["backbones"]) | set(finetune["backbones"])) > 1
    suffix = (lambda bb: f" [{bb}]") if several else (lambda bb: "")
    common = {"data": source_fingerprint, "n_boot": config["n_boot"]}
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
                    )
                    for seed in config["seeds"]
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
    """The source of a config's [source] table, split and limited as declared."""
    source = open_source(
        section["data"],
        val_fraction=section["val_fraction"],
        test_fraction=section["test_fraction"],
        seed=section["split_seed"],
    )
    if section["limits"]:
        source = subsample(source, dict(section["limits"]), seed=section["split_seed"])
    return source


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


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


def _metrics(y, proba, classes, probabilistic: bool, n_boot: int, seed: int) -> dict:
    metrics = compute_metrics(y, proba, classes, n_boot=n_boot, seed=seed)
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
        """Run every unfinished method, then write the reports; returns the run folder."""
        from featpipe.device import resolve_device

        cfg = self.config
        self.run_dir = Path(cfg["out"])
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        results = self.run_dir / RESULTS_FILE
        rows = read_results(results, repair=True)
        done = {(r["method"], r["seed"], r["config_hash"]) for r in rows}
        if self.source is None:
            self.source = open_pipeline_source(cfg["source"])
        self.device = str(resolve_device(cfg["device"]))
        fingerprint = self.source.fingerprint(content=cfg["source"]["hash_contents"])
        self.provenance = {
            "source": {"description": self.source.describe(), "fingerprint": fingerprint},
            "versions": versions(),
            "device": describe_device(self.device),
        }
        methods = plan(cfg, fingerprint)
        finished = len(done & {m.key for m in methods})
        self.log(
            f"{cfg['name']}: {len(methods)} method runs, {finished} already finished; "
            f"results in {results}"
        )
        for m in methods:
            if m.key in done:
                self.log(f"reusing finished {m.label} (seed {m.seed})")
        todo = [m for m in methods if m.key not in done]
        for bb in self.config["features"]["backbones"]:
            probes = [m for m in todo if m.kind == "probe" and m.backbone == bb]
            if probes:
                store, extraction = self._extract(bb)
                for m in probes:
                    self._finish(results, rows, m, self._probe(m, store, extraction))
        for m in (m for m in todo if m.kind == "finetune"):
            self._finish(results, rows, m, self._finetune(m))
        write_report(self.run_dir, rows)
        self.log(f"report: {self.run_dir / 'report.md'} and {self.run_dir / 'report.html'}")
        return self.run_dir

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
        metrics = _metrics(y, proba, store.classes, probabilistic, self.config["n_boot"], m.seed)
        n_test = len(y)
        ext_seconds = float(extraction.get("seconds", 0.0))
        per_image = ext_seconds / extraction["images"] if extraction.get("images") else 0.0
        predict = float(result.predict_seconds or 0.0)
        fit = float(result.select_seconds + result.fit_seconds)
        return self._row(
            m,
            store.classes,
            metrics,
            proba.argmax(axis=1),
            y,
            result.test_ids,
            val_accuracy=result.val_accuracy,
            params={k: _plain(v) for k, v in result.params.items()},
            curve=[
                {"params": {k: _plain(v) for k, v in p.items()}, "score": s}
                for p, s in result.curve
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
            },
            extra_params={"selection": result.selection, "probabilistic": probabilistic},
        )

    # ------------------------------------------------------------ fine-tuning

    def _finetune(self, m: Method) -> dict:
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
            **settings,
        )
        with measure(self.device) as cost:
            with Timer() as fit:
                tuner.fit(self.source)
            with Timer() as predict:
                proba = tuner.predict_proba("test")
        rows = self.source.indices("test")
        y = np.asarray(self.source.labels)[rows]
        metrics = _metrics(y, proba, self.source.classes, True, self.config["n_boot"], m.seed)
        return self._row(
            m,
            list(self.source.classes),
            metrics,
            proba.argmax(axis=1),
            y,
            [self.source.ids[i] for i in rows],
            val_accuracy=float(tuner.best_score_[0]),
            params={**settings, "best_epoch": int(tuner.best_epoch_)},
            curve=None,
            history=[{k: _plain(v) for k, v in h.items()} for h in tuner.history_],
            cost={
                "extraction_seconds": 0.0,
                "extraction_reused": False,
                "fit_seconds": fit.seconds,
                "predict_seconds": predict.seconds,
                "total_seconds": fit.seconds + predict.seconds,
                "images_per_s": len(y) / predict.seconds if predict.seconds else None,
                "peak_host_bytes": cost.peak_host_bytes,
                "peak_device_bytes": cost.peak_device_bytes,
                "trainable_params": int(tuner.trainable_params_),
            },
            provenance={
                "backbone": tuner.backbone_.identity(),
                "store": None,
                "image_size": settings.get("image_size"),
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


def _plain(value):
    """numpy scalars and tuples as plain JSON values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    return value


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
