"""``extract``: features of a backbone's layers over an image source, cached in a store;
``plan_extraction`` and ``run_extraction`` are its two halves (plan once, run the chunks in
one call or in several)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from featpipe.backbones import Backbone, LayerSpec, get_backbone
from featpipe.backbones.base import input_dtype
from featpipe.backbones.layers import layer_requests
from featpipe.data.source import ImageSource
from featpipe.data.unreadable import check_on_error
from featpipe.device import on_device, resolve_device, torch_threads
from featpipe.distributed.ranks import under_torchrun
from featpipe.errors import ConfigError, ImageReadError
from featpipe.extract.datapath import DataPath, get_data_path
from featpipe.extract.inference import Inference
from featpipe.extract.loop import (
    check_chunks,
    compute_identity,
    default_workers,
    probe_layers,
    run_chunks,
)
from featpipe.extract.target import Action, Request, reusable
from featpipe.extract.target import plan as decide
from featpipe.store import FeatureStore, StoreWriter, store_filename
from featpipe.store.lock import StoreLock
from featpipe.store.parts import parted_at
from featpipe.store.schema import DTYPES, n_chunks_for, skipped_rows
from featpipe.store.writer import check_out_file
from featpipe.words import listed

NOTHING_COMPUTED = {
    "images": 0,
    "seconds": 0.0,
    "images_per_s": 0.0,
    "bytes_written": 0,
    "computed_chunks": 0,
    "reused": False,
    "resumed": False,
    "skipped": 0,
    "skipped_now": 0,  # of this call's images (skipped: of every done chunk)
}


def source_name(source: ImageSource) -> str:
    """A short readable name for cache file names: dataset name, folder or CSV name, or kind."""
    desc = source.describe()
    for field in ("name", "root", "csv"):
        if desc.get(field):
            return Path(str(desc[field])).stem
    return str(desc.get("kind", type(source).__name__))


def _check_options(
    dtype: str,
    batch_size: int,
    chunk_rows: int | None,
    workers: int | None,
    lock_timeout: float | None,
) -> None:
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}.")
    for name, value in (("batch_size", batch_size), ("chunk_rows", chunk_rows)):
        if (value is not None or name == "batch_size") and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ConfigError(f"{name} must be a positive integer; got {value!r}.")
    if workers is not None and (not isinstance(workers, int) or workers < 0):
        raise ConfigError(f"workers must be None (automatic) or an integer >= 0; got {workers!r}.")
    if lock_timeout is not None and (
        not isinstance(lock_timeout, (int, float)) or not lock_timeout >= 0
    ):
        raise ConfigError(
            f"lock_timeout must be None (wait as long as it takes) or seconds >= 0; "
            f"got {lock_timeout!r}."
        )


@dataclass(frozen=True)
class ExtractionPlan:
    """Everything an extraction needs, resolved and checked before any file is touched:
    what to compute (source, backbone at its input size, layers, dtype), where (the store's
    ``path``, keyed by ``request``), and how (device, data path, forward ``batch_size``,
    ``rows_per_chunk`` of the store, loader workers, ...). Made by :func:`plan_extraction`,
    run by :func:`run_extraction`."""

    source: ImageSource
    backbone: Backbone
    layers: tuple[str, ...]
    path: Path
    request: Request
    dtype: str
    rows_per_chunk: int
    batch_size: int
    device: torch.device
    data_path: DataPath
    workers: int
    overwrite: bool = False
    progress: bool = True
    hash_contents: bool = False
    torch_compile: bool = False
    on_error: str = "fail"
    lock_timeout: float | None = None

    def run_chunks(self, inference: Inference, path: Path, **options) -> dict:
        """:func:`featpipe.extract.loop.run_chunks` of this plan into the store file at
        ``path`` (the plan's store, or one of its parts), with this plan's source, data
        path, batch size, workers, progress and on_error; ``options`` add the rest."""
        return run_chunks(
            inference,
            self.source,
            self.data_path,
            path,
            batch_size=self.batch_size,
            workers=self.workers,
            progress=self.progress,
            on_error=self.on_error,
            **options,
        )


def plan_extraction(
    source: ImageSource | str,
    backbone: str | Backbone = "efficientnet_lite0",
    layers: str | Sequence[str] = ("pooled",),
    *,
    cache_dir: str | Path = "data/cache",
    out: str | Path | None = None,
    overwrite: bool = False,
    dtype: str = "float16",
    batch_size: int = 64,
    chunk_rows: int | None = None,
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
    request: Request | None = None,
) -> ExtractionPlan:
    """The plan of :func:`extract` with these arguments (see there), checked: unknown layers,
    devices and options raise here. ``chunk_rows`` (None: ``batch_size``) is the store's
    rows per chunk, its unit of resuming and of :func:`run_extraction`'s ``chunks``; the
    forward pass runs ``batch_size`` rows at a time within a chunk. ``request`` is the
    request another process (torchrun's rank 0) made for the same call: given, the source
    is not fingerprinted again."""
    _check_options(dtype, batch_size, chunk_rows, workers, lock_timeout)
    check_on_error(on_error)
    dev = resolve_device(device)
    src = source if isinstance(source, ImageSource) else _open_source(source)
    bb = _sized_backbone(backbone, image_size)
    names = layer_names(layers)
    bb.features(names).remove()  # validates layer names before any file is touched
    # torchrun's other ranks take rank 0's request: the source is fingerprinted once.
    fingerprint = request.source_fingerprint if request else src.fingerprint(content=hash_contents)
    asked, stage = store_request(fingerprint, bb, names, dtype, dev, data_path, decode)
    request = request or asked
    cached = Path(cache_dir) / store_filename(source_name(src), bb.spec, request.key)
    # The parameter's name (featpipe.cli.as_flags shows cache_dir's flag; the command line
    # checks --out itself before this).
    path = check_out_file(
        cached if out is None else out,
        option="cache_dir (CLI: --cache-dir)" if out is None else "out",
    )
    return ExtractionPlan(
        source=src,
        backbone=bb,
        layers=names,
        path=path,
        request=request,
        dtype=dtype,
        rows_per_chunk=batch_size if chunk_rows is None else chunk_rows,
        batch_size=batch_size,
        device=dev,
        data_path=stage,
        workers=default_workers(dev, stage.name) if workers is None else workers,
        overwrite=overwrite,
        progress=progress,
        hash_contents=hash_contents,
        torch_compile=torch_compile,
        on_error=on_error,
        lock_timeout=lock_timeout,
    )


def layer_names(layers: str | LayerSpec | Sequence[str | LayerSpec]) -> tuple[str, ...]:
    """The names of layer requests as a store records them (the pooling included)."""
    return tuple(LayerSpec.of(layer).name for layer in layer_requests(layers))


def store_request(
    fingerprint: str,
    backbone: Backbone,
    layers: str | Sequence[str],
    dtype: str,
    device: torch.device,
    data_path: str = "auto",
    decode: str = "exact",
) -> tuple[Request, DataPath]:
    """The request (store key and ``compute``) of features of ``layers`` of ``backbone``, at
    its image size, over the source of ``fingerprint``, and the data path computing them:
    the one place a store key is made, for :func:`plan_extraction` and for plans that look
    for its store without extracting (the pipeline's probe rows)."""
    stage = get_data_path(data_path, backbone.preprocessing, device, decode)
    weights = input_dtype(backbone.model)[1]  # a float64 model computes in fp64
    compute = compute_identity(device, stage.name, stage.decode, weights)
    names = list(layer_names(layers))
    return Request.build(fingerprint, backbone.identity(), names, dtype, compute), stage


@contextlib.contextmanager
def computing(plan: ExtractionPlan) -> Iterator[Inference]:
    """The plan's model ready to run on its device. On CPU the forward pass gets every core
    (lanes then share them out: :mod:`featpipe.extract.lanes`). On CUDA the device is made
    current, so that pinned memory and streams are not created on GPU 0."""
    dev = plan.device
    with (
        torch_threads() if dev.type == "cpu" else on_device(dev),
        Inference.of_layers(
            plan.backbone,
            plan.layers,
            dev,
            compile=plan.torch_compile,
            batch_size=plan.batch_size,
        ) as inference,  # its hooks must not stay on the caller's backbone
    ):
        yield inference


def run_extraction(
    plan: ExtractionPlan,
    chunks: Sequence[int] | None = None,
    *,
    shard: tuple[int, int] | None = None,
) -> FeatureStore:
    """Carry out ``plan``: reuse its complete store, or create it (or resume it) and compute
    the chunks ``chunks`` (indices into the store's chunks of ``plan.rows_per_chunk`` rows;
    None: every chunk not done yet). The store is marked complete once every chunk is done;
    runs over disjoint chunks, in any order, give the same store as one run over all of them.
    ``plan.overwrite`` replaces the store at every call: a plan run in parts should overwrite
    in its first call only (``dataclasses.replace(plan, overwrite=False)``). Returns the
    store, with this call's stats in ``store.extraction``.

    ``shard=(i, n)`` makes this process task ``i`` of ``n`` of a job array filling one
    parted store (see :mod:`featpipe.extract.parted`); a parted store at the path is
    continued in parts, by any number of processes. Otherwise the store is one file."""
    if shard is not None or (not plan.overwrite and parted_at(plan.path)):
        if chunks is not None:
            raise ConfigError(
                "chunks= selects chunks of a one-file store; a parted store "
                "is filled part by part (shard=)."
            )
        from featpipe.extract.parted import run_parted

        return run_parted(plan, shard)
    if plan.overwrite or not plan.path.exists():
        _check_new_chunks(plan, chunks)
    store = reusable(plan.path, plan.request, plan.overwrite)
    if store is not None:
        return _reused(store, plan.on_error)
    with StoreLock(plan.path, timeout=plan.lock_timeout):
        action = decide(plan.path, plan.request, plan.overwrite)
        if action is Action.CREATE:
            _check_new_chunks(plan, chunks)  # again: the file may have gone while we waited
        else:
            _refuse_skipped(FeatureStore(plan.path), plan.on_error)
        if action is Action.REUSE:  # another process finished it while this one waited
            return _reused(FeatureStore(plan.path), plan.on_error)
        with computing(plan) as inference:
            if action is Action.CREATE:
                _create_store(plan, inference)
            stats = plan.run_chunks(inference, plan.path, chunks=chunks)
    store = FeatureStore(plan.path)
    store.extraction = stats
    return store


def _check_new_chunks(plan: ExtractionPlan, chunks: Sequence[int] | None) -> None:
    """Refuse chunk indices outside the store ``plan`` would create, before it is created (a
    store being replaced would be lost to a typo). A resumed store's own layout is checked
    when it is opened."""
    if chunks is not None:
        check_chunks(chunks, n_chunks_for(len(plan.source.ids), plan.rows_per_chunk))


def store_layout(plan: ExtractionPlan, inference: Inference) -> dict:
    """The layout of a new store for ``plan`` (the keyword arguments of
    :meth:`StoreWriter.create`), its layers' widths from a dummy image."""
    src = plan.source
    layers = probe_layers(inference.model, plan.backbone.preprocessing.crop, plan.device)
    refuse_same_features(plan.backbone.spec, layers)
    return dict(
        ids=src.ids,
        labels=src.labels,
        splits=src.splits,
        classes=src.classes,
        layers=layers,
        dtype=plan.dtype,
        rows_per_chunk=plan.rows_per_chunk,
        attrs=plan.request.store_attrs({**src.describe(), "hash_contents": plan.hash_contents}),
    )


def refuse_same_features(spec: str, layers: dict[str, tuple[int, str]]) -> None:
    """Refuse two requests for one module with one pooling ('stage1' and 'stage1:avg' where
    avg is its default): the store would hold the same features twice, under two names."""
    seen: dict[tuple[str, str], str] = {}
    for name, (_dim, pooling) in layers.items():
        key = (LayerSpec.parse(name).module, pooling)
        if key in seen:
            raise ConfigError(
                f"Layers {seen[key]!r} and {name!r} of {spec} are the same features "
                f"({key[0]!r} pooled by {pooling!r}); ask for one of them."
            )
        seen[key] = name


def _create_store(plan: ExtractionPlan, inference: Inference) -> None:
    """Lay out a new, empty store for ``plan``."""
    # run_chunks reopens it once its DataLoader workers are started
    StoreWriter.create(plan.path, **store_layout(plan, inference)).close()


def extract(
    source: ImageSource | str,
    backbone: str | Backbone = "efficientnet_lite0",
    layers: str | Sequence[str] = ("pooled",),
    *,
    cache_dir: str | Path = "data/cache",
    out: str | Path | None = None,
    overwrite: bool = False,
    dtype: str = "float16",
    batch_size: int = 64,
    chunk_rows: int | None = None,
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
    shard: tuple[int, int] | None = None,
) -> FeatureStore:
    """Features of ``layers`` (one request such as ``"pooled"``, or a list) of ``backbone``
    over ``source``, in a complete store:
    ``run_extraction(plan_extraction(...))``.

    The store lives at ``out``, or in ``cache_dir`` under a name keyed by every input that
    changes features (image set fingerprint, backbone spec, weights, preprocessing, layers with
    their pooling, dtype, and the precision and decode path that ``device`` and ``data_path``
    give): the same inputs reuse it without computing anything, and an interrupted run resumes
    where it stopped (its chunks of ``chunk_rows`` rows, by default ``batch_size``, are fixed
    when the store is created; the forward pass runs ``batch_size`` images at a time). A store
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

    An image that cannot be read, or whose features the model gives as NaN or infinite, stops
    the run with one line naming it (``on_error="fail"``), or keeps its row, marked skipped
    with the reason (``on_error="skip"``; a float16 overflow still stops it): the store's reads
    leave it out and ``store.skipped()`` lists it. ``on_error`` is not part of the store key
    (the other rows' features are the same either way), but a store with skipped rows is
    refused under "fail", whose promise is that every image is in it.

    Under ``torchrun`` every rank fills parts of one parted store (rank 0 plans it, the
    others claim parts as they go; see :mod:`featpipe.extract.parted`); ``shard=(i, n)``
    does the same for task ``i`` of a job array of ``n`` tasks without torchrun. Rank 0 (and
    a single process) returns the complete store; other ranks and shards return once their
    share is written, the store complete only if they were the last.
    """
    options = {
        k: v for k, v in locals().items() if k not in ("source", "backbone", "layers", "shard")
    }
    if under_torchrun():
        if shard is not None:
            raise ConfigError(
                f"shard={shard}{_shard_flag(shard)} is for job arrays without torchrun; under "
                "torchrun the ranks share the parts themselves. Leave it out."
            )
        from featpipe.extract.parted import extract_ranks

        return extract_ranks(source, backbone, layers, options)
    return run_extraction(plan_extraction(source, backbone, layers, **options), shard=shard)


def _shard_flag(shard: object) -> str:
    """The command line's words for ``shard`` (``(0, 2)`` is ``--shard 0/2``), which
    featpipe.cli.as_flags cannot give: a tuple is not a flag's value."""
    if isinstance(shard, tuple) and len(shard) == 2:
        return f" (CLI: --shard {shard[0]}/{shard[1]})"
    return " (CLI: --shard)"


def _reused(store: FeatureStore, on_error: str) -> FeatureStore:
    _refuse_skipped(store, on_error)
    store.extraction = {**NOTHING_COMPUTED, "reused": True, "skipped": len(store.skipped())}
    return store


def _refuse_skipped(store: FeatureStore, on_error: str, shown: int = 3) -> None:
    """Under on_error="fail", a store (complete or not) that left out images is not used."""
    if on_error == "skip":
        return
    skipped = store.skipped()
    if not skipped:
        return
    reasons = (f"{sid} ({why})" for sid, why in skipped.items())
    names = listed(reasons, shown, sep="; ", total=len(skipped))
    left_out = skipped_rows(skipped)
    raise ImageReadError(
        # In the API's words, settings as name="value": the command line names their flags
        # (featpipe.cli.as_flags) and a pipeline its keys (in_file_words).
        f'{store.path} was extracted with on_error="skip" and leaves out {left_out}: '
        f'{names}. Pass on_error="skip" to use it as it is, or fix their cause and run again '
        "(with overwrite=True if only file permissions changed)."
    )


def _sized_backbone(backbone: str | Backbone, image_size: int | None) -> Backbone:
    if isinstance(backbone, Backbone):
        # Its weights may have changed since it was built (fine-tuning, load_state_dict): hash
        # them now, or the store of the old weights would be reused. One pass over the
        # weights, small next to extracting; a spec string builds a fresh, freshly hashed one.
        return backbone.with_current_weights().at_size(image_size)
    return get_backbone(backbone, image_size=image_size)


def _open_source(spec: str) -> ImageSource:
    from featpipe.data import open_source  # the data package is only needed for spec strings

    return open_source(spec)
