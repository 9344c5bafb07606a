"""Check a whole pipeline before any compute: a bad value fails in seconds, not after an hour
of extraction, and leaves no store behind.

The schema (config.py) checks types and names; this module checks what only the libraries
know: each grid value against its head (by fitting the head on a few random rows, which runs
scikit-learn's own parameter validation), each backbone spec, layer and pooling (by building
the backbone and running one dummy image through it), and each fine-tuning mode and setting
against its backbone.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np

from featpipe.distributed.ranks import alone
from featpipe.errors import ConfigError, FeaturePipeError, did_you_mean
from featpipe.pipeline.schema import first_repeat
from featpipe.words import agrees, counted

# A dry fit: enough rows for every head (3 classes, room for CV-free selection), tiny enough
# to cost milliseconds.
_DRY_ROWS, _DRY_DIM, _DRY_CLASSES = 30, 6, 3


def check_grids(config) -> None:
    """Every value of every ``probes.grids`` entry is a valid setting of its head: each one is
    set on a fresh head, alone, and fitted on random rows. Raises ConfigError naming the key."""
    from sklearn.base import clone

    from featpipe.heads.registry import make_head

    rng = np.random.default_rng(0)
    X = rng.normal(size=(_DRY_ROWS, _DRY_DIM))
    y = np.arange(_DRY_ROWS) % _DRY_CLASSES
    _unused_grids(config.probes)
    for name, grid in config.probes.grids.items():
        if name not in config.probes.heads:
            continue
        head = make_head(name)
        valid = head.get_params(deep=False)
        if "device" in valid:  # a dry fit needs no accelerator
            head.set_params(device="cpu")
        for param, values in grid.items():
            where = f"probes.grids.{name}.{param}"
            if param not in valid:
                raise ConfigError(
                    f"{where}: head {name!r} has no parameter {param!r}."
                    f"{did_you_mean(param, valid)} Valid: {', '.join(sorted(valid))}."
                )
            for i, value in enumerate(values):
                try:
                    # a local dry fit: never one shared with torchrun's other ranks
                    with warnings.catch_warnings(), alone():
                        warnings.simplefilter("ignore")  # convergence on random rows
                        clone(head).set_params(**{param: value}).fit(X, y)
                except Exception as exc:  # the estimator's own validation, whatever its type
                    raise ConfigError(
                        f"{where}[{i}] = {value!r} is not a valid setting of head {name!r}: {exc}"
                    ) from exc


def _unused_grids(probes) -> None:
    """Warn of a grid given for a head the pipeline does not run: it changes nothing, most
    likely a head left out of probes.heads (or a grid meant for another head). A warning, not
    an error: narrowing probes.heads with --set keeps the file's other grids."""
    unused = [name for name in probes.grids if name not in probes.heads]
    if unused:
        runs = ", ".join(probes.heads) if probes.heads else "none"
        grids = ", ".join(f"probes.grids.{name}" for name in unused)
        are = "is" if len(unused) == 1 else "are"
        warnings.warn(
            f"{grids} {are} not used: the pipeline runs no such head (probes.heads: {runs}). "
            "Add the head to probes.heads, or remove its grid.",
            UserWarning,
            stacklevel=2,
        )


def check_models(config, train_rows: tuple[int, ...] = ()) -> dict:
    """Every backbone builds at its image size, every feature layer exists and pools (one
    dummy image through the model), every fine-tuning mode fits its backbone and every
    fine-tuning setting is valid. ``train_rows``: the fine-tunes' train row counts known
    before compute (see :func:`finetune_rows`). Raises ConfigError naming the key. Returns
    the backbones built, by spec (the runner reads their identities)."""
    from featpipe.backbones import get_backbone

    features, finetune = config.features, config.finetune
    built = {}
    tuned = finetune.backbones if finetune.modes else []
    for key, specs in (("features", features.backbones), ("finetune", tuned)):
        for i, spec in enumerate(specs):
            if spec not in built:
                try:
                    built[spec] = get_backbone(spec)
                except FeaturePipeError as exc:
                    raise ConfigError(f"{key}.backbones[{i}]: {exc}") from None
        _each_backbone_once(specs, built, f"{key}.backbones")
    _spelled_alike(features.backbones, tuned, built)
    for spec in features.backbones:
        _check_layers(built[spec], features.image_size, list(features.layers))
    if finetune.modes and finetune.grid:  # first: _check_finetune reads valid candidates
        from featpipe.finetune import FineTuner
        from featpipe.finetune.search import check_candidates

        check_candidates(FineTuner(**finetune.params()), dict(finetune.grid), "finetune.grid")
    for spec in tuned:
        for i, mode in enumerate(finetune.modes):
            where = f"finetune.modes[{i}]"
            _check_finetune(built[spec], mode, finetune.params(), finetune.grid, where, train_rows)
    return built


def _each_backbone_once(specs, built: dict, where: str) -> None:
    """No two specs of a list name one backbone ('toy' and 'builtin:toy', a weights file by
    two paths): each would run every method again on the same features, and the report list
    it as several tied methods. ``built``: the backbones by spec, whose ``spec`` is canonical."""
    canonical = [built[spec].spec for spec in specs]
    if repeat := first_repeat(canonical):
        i, j = repeat
        raise ConfigError(
            f"{where}[{i}] = {specs[i]!r} names the same backbone as {where}[{j}] = "
            f"{specs[j]!r} ({canonical[i]!r}); list each backbone once."
        )


def _spelled_alike(features: tuple[str, ...], tuned, built: dict) -> None:
    """A backbone in both lists is written the same in both: else its rows went under two
    names ('[toy]', '[builtin:toy]') and LP-FT did not read its feature store."""
    written = {built[spec].spec: (i, spec) for i, spec in enumerate(features)}
    for i, spec in enumerate(tuned):
        j, other = written.get(built[spec].spec, (None, spec))
        if other != spec:
            raise ConfigError(
                f"finetune.backbones[{i}] = {spec!r} names the backbone of features.backbones"
                f"[{j}] = {other!r}; write it the same way in both lists."
            )


def check_cache_dir(config) -> None:
    """``features.cache_dir`` takes files, when the run will extract into it (probes, or
    LP-FT's probe): found out now, not after the plan is written and the first backbone is
    built."""
    from featpipe.pipeline.stages.finetune import stores_read

    if not stores_read(config):
        return
    folder = Path(config.features.cache_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ConfigError(
            f"features.cache_dir = {str(folder)!r}: cannot write there "
            f"({exc.strerror or exc}). Set features.cache_dir (or --set "
            "features.cache_dir=DIR) to a folder you can write to."
        ) from None


def check_folders_outside_images(config, source) -> None:
    """``out`` and ``features.cache_dir`` (where the run writes stores) are not inside the image
    folder the run reads: the next run's scan of that folder took such a folder for a class
    folder without images (refused) or, inside a class folder, the report's plots/*.png for
    images of that class (its rows were all computed again, on those)."""
    from featpipe.data.folder import folder_enclosing
    from featpipe.pipeline.stages.finetune import stores_read

    plots = "its folders for class folders, or its report's plots/*.png for images of a class"
    folders = [("out", config.out, plots, "--out DIR")]
    if stores_read(config):
        empty = "it for a class folder without images"
        cache = ("features.cache_dir", config.features.cache_dir)
        folders.append((*cache, empty, "--set features.cache_dir=DIR"))
    for key, folder, taken, option in folders:
        root = folder_enclosing(source, folder)  # through source.limits' subset too
        if root is not None:
            raise ConfigError(
                f"{key} = {folder!r} is in the image folder {root} that the pipeline reads: "
                f"the next run's scan of that folder would take {taken}. Give {key} a "
                f"folder outside the image folder ({option})."
            )


def check_sizes(config, source) -> None:
    """The source has test images to evaluate every method on, and every size of the
    data-size sweep fits in its train split."""
    if len(source.indices("test")) == 0:
        raise ConfigError(
            f"The source has no test images ({source.split_counts()}), so no method can be "
            "evaluated; set source.test_fraction > 0 or give the source a test split."
        )
    n_train = len(source.indices("train"))
    too_big = [n for n in config.source.train_sizes if n > n_train]
    if too_big:
        raise ConfigError(
            f"source.train_sizes {too_big} exceed the {n_train} train images of the source; "
            f"use sizes up to {n_train}."
        )
    probes = bool(config.probes.heads and config.probes.layers)
    if probes or (config.finetune.modes and config.finetune.backbones):
        _two_classes(config, source)
    if probes:
        _val_to_choose(config, source)


def finetune_rows(config, source) -> tuple[int, ...]:
    """The train row counts of the fine-tunes, where known before compute: each size of the
    data-size sweep, or the train split. Unknown (empty) without a val split: the fine-tune
    then carves its val rows out of train."""
    if not config.finetune.modes or len(source.indices("val")) == 0:
        return ()
    return tuple(config.source.train_sizes) or (len(source.indices("train")),)


def _two_classes(config, source) -> None:
    """The train rows of the heads and fine-tunes hold at least 2 classes (each refuses fewer,
    but only after extraction or once it starts): the train split's, and each size of the
    data-size sweep (one image is one class; a small subset of an imbalanced split can hold
    only its largest class). A subset that leaves out some of the split's classes warns."""
    from featpipe.data.splits import nested_subsets

    train = source.indices("train")
    labels = np.asarray(source.labels)[train]
    classes = len(np.unique(labels))
    if classes < 2:
        raise ConfigError(
            f"The source's train split holds {counted(len(train), 'image')} of "
            f"{counted(classes, 'class', 'classes')}; "
            "a head or fine-tune needs train images of at least 2 classes. Raise "
            "source.limits.train, or give the source images of more classes."
        )
    if ones := [n for n in config.source.train_sizes if n < 2]:
        raise ConfigError(
            f"source.train_sizes {ones}: one train image is one class, and a head or "
            "fine-tune needs train images of at least 2 classes; use sizes of 2 or more."
        )
    # The subsets the sweep will train on (jobs.sweep_ids draws them the same way, seeded).
    ids = [source.ids[r] for r in train]
    drawn = nested_subsets(labels, config.source.train_sizes, config.source.split_seed, ids)
    if alone := [n for n, rows in drawn.items() if len(np.unique(labels[rows])) < 2]:
        name = source.classes[int(labels[drawn[alone[0]][0]])]
        raise ConfigError(
            f"source.train_sizes {alone}: the train subset of {alone[0]} images holds only "
            f"class {name!r} (subsets keep each class's share of the {len(train)} train "
            "images), and a head or fine-tune needs train images of at least 2 classes; use "
            "larger sizes."
        )
    # A warning, not a refusal: such a run is valid, its smallest sizes just score low.
    if short := [n for n, rows in drawn.items() if len(np.unique(labels[rows])) < classes]:
        held = len(np.unique(labels[drawn[short[0]]]))
        warnings.warn(
            f"source.train_sizes {short}: the train subset of {short[0]} images holds {held} "
            f"of the {classes} classes of the train split; what trains on it cannot predict "
            "the others, so each of their test images counts as an error. Use larger sizes "
            f"(at least {classes}, one image per class).",
            UserWarning,
            stacklevel=2,
        )


def _val_to_choose(config, source) -> None:
    """Heads that read a store chunk by chunk (``logreg_stream``, ``knn_faiss``) choose on its
    val split, having no cross-validation: refused now, not after extraction."""
    from featpipe.heads.registry import HEADS

    if len(source.indices("val")):
        return
    streamed = [h for h in config.probes.heads if getattr(HEADS[h].factory, "streams_store", 0)]
    if streamed:
        s = "s" if len(streamed) == 1 else ""  # the verbs agree with one head or two
        raise ConfigError(
            f"probes.heads: {' and '.join(streamed)} read{s} "
            f"the feature store chunk by chunk and choose{s} parameters on the val split, which "
            "the source does not have "
            f"({source.split_counts()}; cross-validation would need the rows in memory). Set "
            "source.val_fraction above 0, give the source a val split, or use in-memory heads "
            "(logreg, knn)."
        )


def _check_layers(backbone, image_size: int | None, layers: list[str]) -> None:
    import torch

    from featpipe.extract.extractor import refuse_same_features
    from featpipe.extract.loop import probe_layers

    try:
        sized = backbone.at_size(image_size)
    except FeaturePipeError as exc:
        raise ConfigError(f"features.image_size: {exc}") from None
    try:
        model = sized.features(layers)
    except FeaturePipeError as exc:
        raise ConfigError(f"features.layers of {backbone.spec}: {exc}") from None
    crop = sized.preprocessing.crop
    try:
        probed = probe_layers(model, crop, torch.device("cpu"))
    except (FeaturePipeError, RuntimeError) as exc:  # a pooling or a size the model refuses
        raise ConfigError(
            f"features.layers of {backbone.spec}: a dummy {crop}×{crop} image through the "
            f"model failed: {exc}"
        ) from None
    finally:
        model.remove()
    try:  # 'stage1' and 'stage1:avg': the pooling each resolved to is known only now
        refuse_same_features(backbone.spec, probed)
    except ConfigError as exc:
        raise ConfigError(f"features.layers: {exc}") from None


def _check_finetune(
    backbone, mode: str, options: dict, grid: dict, where: str, train_rows: tuple[int, ...]
) -> None:
    from sklearn.model_selection import ParameterGrid

    from featpipe.distributed import current_ranks
    from featpipe.finetune import FineTuner
    from featpipe.finetune.freezing import (
        Mode,
        check_batches_of_one,
        freeze,
        training_batch_norm,
    )
    from featpipe.finetune.tuner import check_one_classifier

    try:
        FineTuner(backbone.spec, mode=mode, **options)._check_params()
        check_one_classifier(backbone)
        backbone.at_size(options["image_size"])
        # The mode against the backbone's stages (partial:N beyond them); the model is ours.
        frozen = freeze(
            backbone.model, Mode.parse(mode), backbone.stages, backbone.classifier or ""
        )
    except FeaturePipeError as exc:
        raise ConfigError(f"{where} ({mode!r} on {backbone.spec}): {exc}") from None
    # FineTuner and fit_grid refuse it too, but only once the fine-tune starts (after
    # extraction): the base batch_size and every grid candidate's. SyncBatchNorm normalises
    # over every rank's images.
    ranks = current_ranks().world_size
    # One train image per rank is a batch of one too, whatever the batch_size (each rank
    # draws n // ranks rows); FineTuner refuses it only once the fine-tune starts.
    ones = [n for n in train_rows if n // ranks == 1]
    synced = [bool(p.get("sync_bn", options["sync_bn"])) for p in ParameterGrid(dict(grid))]
    if (
        ones
        and not (ranks > 1 and all(synced))
        and (bn := training_batch_norm(backbone.model, frozen))
    ):
        per_rank = f" over {ranks} ranks" if ranks > 1 else ""
        raise ConfigError(
            f"{where} ({mode!r} on {backbone.spec}): {counted(ones[0], 'train image')}{per_rank} "
            f"{agrees(ones[0], 'trains', 'train')} batches of 1 image through batch norm that "
            f"trains (e.g. {bn[0]}), which "
            "normalises each batch by its own statistics. Use at least 2 train images per "
            "rank (source.train_sizes, source.limits.train), or a mode that keeps batch norm "
            "frozen (bn, head, lpft)."
        )
    for params in ParameterGrid(dict(grid)):
        settings = {**options, **params}
        if "image_size" in params:  # a size the backbone refuses (fixed, or out of range)
            try:
                backbone.at_size(params["image_size"])
            except FeaturePipeError as exc:
                raise ConfigError(
                    f"{where} ({mode!r} on {backbone.spec}): finetune.grid candidate {params}: "
                    f"{exc}"
                ) from None
        batch = settings["batch_size"]
        if batch != ranks or (settings["sync_bn"] and ranks > 1):
            continue
        said = f"{where} ({mode!r} on {backbone.spec}): "
        if params.keys() & {"batch_size", "sync_bn"}:
            said += f"finetune.grid candidate {params}: batch_size {batch}"
        else:
            said += f"finetune.batch_size {batch}"
        check_batches_of_one(backbone.model, frozen, said, ranks)
