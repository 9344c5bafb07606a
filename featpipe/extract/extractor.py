"""``extract``: features of a backbone's layers over an image source, cached in a store."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from featpipe.backbones import Backbone, LayerSpec, get_backbone
from featpipe.data.source import ImageSource
from featpipe.data.unreadable import check_on_error
from featpipe.device import on_device, resolve_device, torch_threads
from featpipe.errors import ConfigError, ImageReadError
from featpipe.extract.datapath import get_data_path
from featpipe.extract.fixed_batch import FixedBatch
from featpipe.extract.loop import (
    compute_identity,
    default_workers,
    prepare_model,
    probe_layers,
    run_chunks,
)
from featpipe.extract.target import Action, Request, plan, reusable
from featpipe.store import FeatureStore, StoreWriter, store_filename
from featpipe.store.lock import StoreLock
from featpipe.store.schema import DTYPES

NOTHING_COMPUTED = {
    "images": 0,
    "seconds": 0.0,
    "images_per_s": 0.0,
    "bytes_written": 0,
    "computed_chunks": 0,
    "reused": False,
    "resumed": False,
    "skipped": 0,
}


def source_name(source: ImageSource) -> str:
    """A short readable name for cache file names: dataset name, folder or CSV name, or kind."""
    desc = source.describe()
    for field in ("name", "root", "csv"):
        if desc.get(field):
            return Path(str(desc[field])).stem
    return str(desc.get("kind", type(source).__name__))


def _check_options(
    dtype: str, batch_size: int, workers: int | None, lock_timeout: float | None
) -> None:
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer; got {batch_size!r}.")
    if workers is not None and (not isinstance(workers, int) or workers < 0):
        raise ConfigError(f"workers must be None (automatic) or an integer >= 0; got {workers!r}.")
    if lock_timeout is not None and (
        not isinstance(lock_timeout, (int, float)) or not lock_timeout >= 0
    ):
        raise ConfigError(
            f"lock_timeout must be None (wait as long as it takes) or seconds >= 0; "
            f"got {lock_timeout!r}."
        )


def extract(
    source: ImageSource | str,
    backbone: str | Backbone = "efficientnet_lite0",
    layers: Sequence[str] = ("pooled",),
    *,
    cache_dir: str | Path = "data/cache",
    out: str | Path | None = None,
    overwrite: bool = False,
    dtype: str = "float16",
    batch_size: int = 64,
    workers: int | None = None,
    device: str = "auto",
    image_size: int | None = None,
    data_path: str = "auto",
    decode: str = "exact",
    progress: bool = True,
    hash_contents: bool = False,
    torch_compile: bool = False,
    on_error: str = "fail",
    lock_timeout: float | None = None,
) -> FeatureStore:
    """Features of ``layers`` of ``backbone`` over ``source``, in a complete store.

    The store lives at ``out``, or in ``cache_dir`` under a name keyed by every input that
    changes features (image set fingerprint, backbone spec, weights, preprocessing, layers with
    their pooling, dtype, and the precision and decode path that ``device`` and ``data_path``
    give): the same inputs reuse it without computing anything, and an interrupted run resumes
    where it stopped (chunk size ``batch_size`` is fixed when the store is created). A store
    at ``out`` made from other inputs raises StoreMismatchError unless ``overwrite``, which
    replaces whatever is there. Stats of this call are in ``store.extraction``; the cost of
    every run that built the store is in ``store.attrs["extraction"]``. ``torch_compile``
    runs the model through ``torch.compile`` (worth its compilation time on long GPU runs; the
    features are the same up to float rounding). ``decode="fast"`` decodes JPEGs at the
    smallest DCT scale that still covers the resize, on the cpu data path: faster, with
    features a little different (benchmarks/README.md), so it is part of the store key.

    One process at a time creates, resumes or finishes a store: another one waits for it
    (saying for whom) up to ``lock_timeout`` seconds (None: as long as it takes), then raises
    StoreInUseError; once the first finishes, the waiting one reuses its store.

    An image that cannot be read stops the run with one line naming it (``on_error="fail"``),
    or keeps its row, marked skipped with the reason (``on_error="skip"``): the store's reads
    leave it out and ``store.skipped()`` lists it. ``on_error`` is not part of the store key
    (the other rows' features are the same either way), but a store with skipped rows is
    refused under "fail", whose promise is that every image is in it.
    """
    _check_options(dtype, batch_size, workers, lock_timeout)
    check_on_error(on_error)
    dev = resolve_device(device)
    src = source if isinstance(source, ImageSource) else _open_source(source)
    if isinstance(backbone, Backbone):
        bb = backbone.at_size(image_size)
    else:
        bb = get_backbone(backbone, image_size=image_size)
    stage = get_data_path(data_path, bb.preprocessing, dev, decode)
    names = [LayerSpec.parse(layer).name for layer in layers]
    model = bb.features(names)  # validates layer names before any file is touched
    try:
        request = Request.build(
            src.fingerprint(content=hash_contents),
            bb.identity(),
            names,
            dtype,
            compute_identity(dev, stage.name, stage.decode),
        )
        if out is not None:
            path = Path(out)
        else:
            path = Path(cache_dir) / store_filename(source_name(src), bb.spec, request.key)
        store = reusable(path, request, overwrite)
        if store is not None:
            return _reused(store, on_error)
        with StoreLock(path, timeout=lock_timeout):
            action = plan(path, request, overwrite)
            if action is not Action.CREATE:
                _refuse_skipped(FeatureStore(path), on_error)
            if action is Action.REUSE:  # another process finished it while this one waited
                return _reused(FeatureStore(path), on_error)
            n_workers = default_workers(dev, stage.name) if workers is None else workers
            # On CPU the forward pass gets every core: it dominates, and decoding workers
            # beside it wait on a full queue most of the time. On CUDA the device is made
            # current, so that pinned memory and streams are not created on GPU 0.
            with torch_threads() if dev.type == "cpu" else on_device(dev):
                model = prepare_model(model, dev)
                if action is Action.CREATE:
                    StoreWriter.create(
                        path,
                        ids=src.ids,
                        labels=src.labels,
                        splits=src.splits,
                        classes=src.classes,
                        layers=probe_layers(model, bb.preprocessing.crop, dev),
                        dtype=dtype,
                        rows_per_chunk=batch_size,
                        attrs=request.store_attrs(
                            {**src.describe(), "hash_contents": hash_contents}
                        ),
                    ).close()  # run_chunks reopens it once its DataLoader workers are started
                stats = run_chunks(
                    FixedBatch(torch.compile(model), batch_size) if torch_compile else model,
                    src,
                    stage,
                    path,
                    dev,
                    workers=n_workers,
                    progress=progress,
                    on_error=on_error,
                )
    finally:
        model.remove()  # the hooks must not stay on the caller's backbone
    store = FeatureStore(path)
    store.extraction = stats
    return store


def _reused(store: FeatureStore, on_error: str) -> FeatureStore:
    _refuse_skipped(store, on_error)
    store.extraction = {**NOTHING_COMPUTED, "reused": True, "skipped": len(store.skipped())}
    return store


def _refuse_skipped(store: FeatureStore, on_error: str, shown: int = 3) -> None:
    """Under on_error="fail", a store (complete or not) that left out images is not used."""
    skipped = store.skipped()
    if on_error == "skip" or not skipped:
        return
    names = "; ".join(f"{sid} ({reason})" for sid, reason in list(skipped.items())[:shown])
    more = f" and {len(skipped) - shown} more" if len(skipped) > shown else ""
    raise ImageReadError(
        f"{store.path} was extracted with on_error='skip' and leaves out {len(skipped)} "
        f'unreadable image(s): {names}{more}. Run with --on-error skip (on_error="skip") to '
        "use it as it is, or fix the files and run again (with --overwrite if only their "
        "permissions changed)."
    )


def _open_source(spec: str) -> ImageSource:
    from featpipe.data import open_source  # the data package is only needed for spec strings

    return open_source(spec)
