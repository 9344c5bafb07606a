"""The probe stage: every head on every stored layer of every feature backbone."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from featpipe.errors import ConfigError
from featpipe.evaluate import Cost, Extraction, Usage, measure
from featpipe.evaluate.metrics import DEFAULT_BOOT
from featpipe.pipeline.jobs import (
    HASHED_N_BOOT,
    Job,
    PlanData,
    RowContext,
    RunContext,
    at_sizes,
    backbone_suffix,
    config_hash,
    decode_setting,
    hashes_at_n_boot,
    skip_summary,
    sweep_ids,
)
from featpipe.pipeline.stages.extract import feature_store
from featpipe.provenance import plain
from featpipe.report.results import MethodKind, Predictions, ResultRow
from featpipe.store import TrainSubset

if TYPE_CHECKING:
    from featpipe.pipeline.config import PipelineConfig

NAME = "probe"


def plan(config: PipelineConfig, data: PlanData) -> list[Job]:
    """One job per (backbone, layer, head, seed). The config hash covers the data and the
    head's own settings, so changing one head's grid or adding a head redoes nothing else.

    A head without randomness (no seed parameter in the registry) chosen on a fixed validation
    split is deterministic: it runs once, with the first seed, whatever ``seeds`` lists. With
    cross-validated selection the seed draws the folds, so every head runs per seed. Heads
    whose seed reaches their estimator hash the parameter it sets."""
    from featpipe.heads.registry import HEADS

    features = config.features
    suffix = backbone_suffix(config)
    jobs = []
    for bb in features.backbones:
        for layer in config.probes.layers:
            for head in config.probes.heads:
                entry = HEADS[head]
                settings = {
                    "data": data.fingerprint,
                    **HASHED_N_BOOT,
                    "backbone": bb,
                    "image_size": features.image_size,
                    "dtype": features.dtype,
                    "layer": layer,
                    "head": head,
                    "grid": config.probes.grids.get(head),
                    **decode_setting(config),
                }
                if entry.seed_param:
                    settings["seed_param"] = entry.seed_param
                if config.source.train_sizes:
                    settings["refit_on"] = "train"  # see run
                deterministic = not entry.seed_param and not data.cv_selection
                label = f"{entry.label} on {layer_words(layer)}{suffix(bb)}"
                jobs += [
                    Job(NAME, f"{bb}/{head}@{layer}", MethodKind.PROBE, label, bb, seed,
                        config_hash(settings), layer=layer, head=head, deterministic=deterministic,
                        backbone_at=(bb, features.image_size), store_of=bb,
                        hash_at_n_boot=hashes_at_n_boot(settings))
                    for seed in (config.seeds[:1] if deterministic else config.seeds)
                ]  # fmt: skip
    return at_sizes(config, jobs)


def run(job: Job, context: RunContext) -> ResultRow:
    """Select and fit the job's head on its backbone's feature store, then test it."""
    from featpipe.heads import select_and_fit  # late: tests stop a run inside it

    store, extraction = feature_store(context, job.backbone)
    train_ids = sweep_ids(context, job.train_size)
    if train_ids is not None:
        store = TrainSubset(store, train_ids)
    with measure(context.device) as usage:
        result = select_and_fit(
            job.head,
            store,
            layer=job.layer,
            seed=job.seed,
            device=context.device,
            grid=context.config.probes.grids.get(job.head),
            progress=context.progress,
            # At a sweep size, val (kept whole) only chooses, as in fine-tuning: refitting on
            # it would train "N train images" on N plus every val image.
            refit_on="train+val" if train_ids is None else "train",
        )
    image_size = context.config.features.image_size
    return probe_row(job, context, store, result, usage, extraction, image_size=image_size)


def probe_row(
    job: Job,
    context: RowContext,
    store,
    result,
    usage: Usage,
    extraction: Extraction,
    *,
    image_size: int | None,
) -> ResultRow:
    """The row of a head fitted on ``store`` (a :class:`featpipe.heads.SelectionResult`),
    tested on the store's test split; also written by ``featpipe probe --run-dir``."""
    if result.test_scores is None:
        raise ConfigError(
            f"The source has no test rows, so {job.label} cannot be evaluated; "
            "set source.test_fraction > 0 or give a test split."
        )
    proba, probabilistic = probabilities(result)
    y = np.asarray(result.test_labels)
    # The head's own predictions: an SVM's predict is not the argmax of its decision
    # function on ties, and selection and test_accuracy use predict.
    y_pred = np.asarray(result.test_pred)
    predict = float(result.predict_seconds or 0.0)
    return context.row(
        job,
        classes=list(store.classes),
        metrics=context.metrics(
            y, proba, store.classes, job.seed, probabilistic=probabilistic, y_pred=y_pred
        ),
        val_accuracy=None if result.val_accuracy is None else float(result.val_accuracy),
        params={
            **{k: plain(v) for k, v in result.params.items()},
            "selection": result.selection,
            **({"refit_on": result.refit_on} if result.refit_on != "train+val" else {}),
            "probabilistic": probabilistic,
            # read by the report's warnings; present only when the solver stopped at max_iter
            **({"hit_iteration_limit": True} if _hit_iteration_limit(result.estimator) else {}),
        },
        curve=[
            {"params": {k: plain(v) for k, v in p.items()}, "score": s} for p, s in result.curve
        ],
        cost=Cost.of(
            usage,
            fit_seconds=result.select_seconds + result.fit_seconds,
            predict_seconds=predict,
            n_test=len(y),
            trainable_params=head_parameters(result.estimator),
            extraction=extraction,
        ),
        test=Predictions.of(result.test_ids, y, y_pred),
        provenance={
            "backbone": store.attrs.get("backbone"),
            "store": {"path": str(store.path), "key": store.key},
            # how the store computed its features, which the config hash leaves out: a re-run
            # reuses the row only on features computed alike (see Job.store_of)
            "compute": store.attrs.get("compute"),
            "image_size": image_size,
            "skipped": skip_summary(store.skipped()),
        },
    )


def layer_words(layer: str) -> str:
    """``layer pooled``, or ``layers pooled+blocks.5:avg`` for concatenated layers."""
    from featpipe.heads.splits import layer_parts

    return f"layer{'s' if len(layer_parts(layer)) > 1 else ''} {layer}"


def head_parameters(estimator) -> int:
    """Learned numbers in a fitted head's classifier (weights, biases, support vectors, and
    the Nystroem SVM's landmarks and linear SVM, held in its parts); kNN, which only stores
    its training set, has none."""
    clf = getattr(estimator, "classifier_", estimator)
    names = (
        "coef_",
        "intercept_",
        "coefs_",
        "intercepts_",
        "dual_coef_",
        "support_vectors_",
        "components_",
    )
    total = 0
    for part in (clf, getattr(clf, "features_", None), getattr(clf, "linear_", None)):
        for name in names:
            value = getattr(part, name, None)
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


def store_row(
    store, layer: str, result, usage: Usage, *, seed: int, cv: int, device: str, run: str
) -> ResultRow:
    """The row of a head fitted outside a pipeline (``featpipe probe --run-dir``) on a store
    that `featpipe extract` built: the same row a pipeline writes, with the store's own
    provenance, and its extraction counted as reused."""
    from featpipe.heads.registry import HEADS
    from featpipe.pipeline.runner import describe_device
    from featpipe.provenance import versions

    spec = (store.attrs.get("backbone") or {}).get("spec", "?")
    head = result.head
    entry = HEADS[head]
    settings = {"store": store.key, "layer": layer, "head": head, "cv": cv}
    if entry.seed_param:
        settings["seed_param"] = entry.seed_param
    label = f"{entry.label} on {layer_words(layer)}"
    deterministic = not entry.seed_param and store.split_counts().get("val", 0) > 0
    job = Job(
        NAME,
        f"{spec}/{head}@{layer}",
        MethodKind.PROBE,
        label,
        spec,
        seed,
        config_hash(settings),
        layer=layer,
        head=head,
        deterministic=deterministic,
    )
    source = {
        "description": store.attrs.get("source"),
        "fingerprint": store.attrs.get("source_fingerprint"),
    }
    context = RowContext(
        run,
        DEFAULT_BOOT,
        {"source": source, "versions": versions(), "device": describe_device(device)},
    )
    stats = store.attrs.get("extraction") or {}
    extraction = Extraction(
        seconds=float(stats.get("seconds", 0.0)), images=int(stats.get("images") or 0), reused=True
    )
    return probe_row(job, context, store, result, usage, extraction, image_size=None)


def _hit_iteration_limit(estimator) -> bool:
    """Whether an iterative head stopped at its iteration limit rather than converging."""
    n_iter, max_iter = getattr(estimator, "n_iter_", None), getattr(estimator, "max_iter", None)
    return n_iter is not None and bool(max_iter) and int(np.max(n_iter)) >= int(max_iter)
