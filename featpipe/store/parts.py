"""The parted layout of a store: one file per part, and a top-level file that maps them.

A store filled by several processes (torchrun ranks, ``--shard`` job-array tasks) is cut into
**parts**, contiguous runs of whole chunks fixed from the number of chunks alone (never from
the number of processes), so that any later run, with any number of processes, continues it.
Part ``k`` is ``<store>.parts/part-<k:05d>.h5``, a normal store file over its rows (one
writer per file, today's chunk loop writes it) with the attributes ``parent_key``, ``part``
and ``first_row``. The top-level ``<store>.h5`` holds ``samples/*``, ``classes`` and every
root attribute, plus ``layout="parts"`` and ``part_chunks`` (the first chunk of every part,
then the number of chunks). Its ``features/<layer>``, ``samples/ok`` and ``progress/*`` are
HDF5 virtual datasets over the parts, by paths relative to the top-level file (HDF5 looks for
a relative source beside the file that maps it, so the store folder can be moved). A virtual
dataset reads its fill value (zeros; False for ``chunk_done`` and ``ok``) where a source file
is missing, so readers check the parts first (:func:`check_parts`). ``samples/error`` is
copied into the top-level file when the store is completed (:func:`finish_parted`).
"""

from __future__ import annotations

import glob
import itertools
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from featpipe.atomic import sync_placed
from featpipe.errors import (
    ConfigError,
    FeaturePipeError,
    MissingPartError,
    StoreInUseError,
    StoreMismatchError,
    StoreWriteError,
    UnreadableStoreError,
)
from featpipe.store import schema
from featpipe.store.files import open_h5, sync_h5, unreadable_reason
from featpipe.store.lock import LOCK_SUFFIX, holder
from featpipe.words import listed

LAYOUT = "parts"  # the root attribute ``layout`` of a parted store (absent: one file)
MAX_PARTS = 1000
# A part restarts the loader and opens a file: ~0.1-0.3 s on a CPU (benchmarks/scaling.py),
# so parts are kept at 4 chunks or more and tiny stores get only a few.
MIN_PART_CHUNKS = 4


@dataclass(frozen=True)
class Part:
    """Part ``index``: chunks ``[first_chunk, stop_chunk)``, rows ``[first_row, stop_row)``,
    in the file ``path``."""

    index: int
    first_chunk: int
    stop_chunk: int
    first_row: int
    stop_row: int
    path: Path

    @property
    def rows(self) -> int:
        return self.stop_row - self.first_row


def parts_dir(store: str | Path) -> Path:
    """``x.h5`` -> ``x.parts``: the folder of a parted store's part files. Names that differ
    in their last suffix only (``x.v1``, ``x.v2``) map to one folder: :func:`check_parts_dir`
    refuses the second store."""
    return Path(store).with_suffix(".parts")


def check_parts_dir(path: Path) -> None:
    """Raise ConfigError when a parted store at ``path`` would lay out its parts in the parts
    folder of another store: one that is parted, or being made now (its lock held, no file
    yet). Call it holding the lock of ``path``; the other store's maker then sees this one."""
    folder = parts_dir(path)
    if folder == path:
        raise ConfigError(
            f"{path}: a parted store keeps its parts in <name without suffix>.parts, so its "
            "own name cannot end in .parts. Write it to a file named *.h5."
        )
    for name in sorted({p.name for p in path.parent.glob(glob.escape(path.stem) + "*")}):
        other = path.with_name(name.removesuffix(LOCK_SUFFIX))
        if other in (path, folder) or parts_dir(other) != folder:
            continue
        if not (parted_at(other) or (not other.exists() and holder(other) is not None)):
            continue
        fix = path.with_name(f"{path.stem}-{path.suffix.lstrip('.') or '2'}.h5")
        raise ConfigError(
            f"{path} would keep its parts in {folder}, the parts folder of the parted store "
            f"{other} (a name that differs from it in its last suffix only): laying it out "
            f"would delete {other.name}'s parts. Write the store under another name (e.g. "
            f"{fix.name}: its parts go to {parts_dir(fix).name})."
        )


def part_name(index: int) -> str:
    return f"part-{index:05d}.h5"


def part_bounds(
    n_chunks: int,
    rows_per_chunk: int,
    shard_starts: Sequence[int] | None = None,
    *,
    max_parts: int = MAX_PARTS,
    min_chunks: int = MIN_PART_CHUNKS,
) -> list[int]:
    """The first chunk of every part, then ``n_chunks``: parts as even as whole chunks allow,
    at least ``min_chunks`` chunks each and at most ``max_parts`` of them. ``shard_starts``
    (the first row of each input shard, e.g. each tar of a WebDataset) moves a boundary to the
    chunk boundary nearest a shard start when one lies within half a part of it, so that a
    part reads few shards."""
    n_parts = max(1, min(max_parts, n_chunks // max(1, min_chunks)))
    step = n_chunks / n_parts
    bounds = [round(k * step) for k in range(n_parts + 1)]
    if shard_starts:
        natural = np.unique([min(n_chunks, round(s / rows_per_chunk)) for s in shard_starts])
        for k in range(1, n_parts):
            nearest = natural[np.argmin(np.abs(natural - bounds[k]))]
            if abs(nearest - bounds[k]) <= step / 2:
                bounds[k] = int(nearest)
    return sorted(set(bounds))


def is_parted(attrs: Mapping[str, Any]) -> bool:
    value = attrs.get("layout")
    return (value.decode() if isinstance(value, bytes) else value) == LAYOUT


def parted_at(path: str | Path) -> bool:
    """Whether a parted store's top-level file is at ``path``."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as f:
            return is_parted(f.attrs)
    except OSError:
        return False


def parts_of(path: str | Path, attrs: Mapping[str, Any]) -> list[Part]:
    """The parts of the parted store at ``path`` from its root attributes."""
    path = Path(path)
    bounds = [int(b) for b in np.asarray(attrs["part_chunks"]).ravel()]
    rows, n = int(attrs["rows_per_chunk"]), int(attrs["n_rows"])
    folder = parts_dir(path)
    return [
        Part(k, a, b, a * rows, min(n, b * rows), folder / part_name(k))
        for k, (a, b) in enumerate(itertools.pairwise(bounds))
    ]


def create_parted(
    path: str | Path,
    *,
    ids: Sequence[str],
    labels: np.ndarray,
    splits: np.ndarray,
    classes: Sequence[str],
    layers: Mapping[str, tuple[int, str]],
    dtype: str,
    rows_per_chunk: int,
    attrs: Mapping[str, Any],
    bounds: Sequence[int],
) -> list[Part]:
    """Lay out a new parted store at ``path`` (replacing any store there): every part file,
    empty, then the top-level file (built under a temporary name and renamed), so a top-level
    file always finds its parts made. Refused when its parts folder is another store's
    (:func:`check_parts_dir`); call it holding the store's lock."""
    from featpipe.store.writer import (
        check_samples,
        create_new,
        creating_elsewhere,
        discard,
        file_id,
        replace_store_file,
        write_root,
        write_samples,
    )

    path = Path(path)
    labels = check_samples(ids, labels, classes)  # before the store there loses its parts
    n = len(ids)
    n_chunks = schema.n_chunks_for(n, rows_per_chunk)
    bounds = [int(b) for b in bounds]
    if bounds[0] != 0 or bounds[-1] != n_chunks:
        raise ValueError(f"part bounds must run from 0 to {n_chunks}; got {bounds}")
    root = {**attrs, "layout": LAYOUT, "n_rows": n, "rows_per_chunk": rows_per_chunk}
    root["part_chunks"] = np.asarray(bounds, dtype=np.int64)
    parts = parts_of(path, root)
    check_parts_dir(path)
    shutil.rmtree(parts_dir(path), ignore_errors=True)
    parts_dir(path).mkdir(parents=True)
    splits = np.asarray(splits)
    for part in parts:
        _create_part(part, ids, labels, splits, classes, layers, dtype, rows_per_chunk, attrs)
    tmp = path.with_name(path.name + ".tmp")
    busy = creating_elsewhere(path, tmp)  # a Python API writer, which takes no store lock
    made = None
    try:
        with create_new(tmp, busy) as f:
            made = file_id(f)
            write_root(f, root, list(layers), dtype, rows_per_chunk, n_chunks)
            write_samples(f, ids, labels, splits, classes)
            _map_parts(f, path, parts, n, n_chunks, layers, dtype)
        # keeping the parts folder just laid out, even when the old store was parted
        replace_store_file(tmp, path, made, busy, drop_parts=False)
    except BaseException:
        discard(tmp, made)
        raise
    sync_placed(path, StoreWriteError)
    return parts


def _create_part(
    part: Part, ids, labels, splits, classes, layers, dtype, rows_per_chunk, attrs
) -> None:
    from featpipe.store.writer import StoreWriter

    rows = slice(part.first_row, part.stop_row)
    StoreWriter.create(
        part.path,
        ids=list(ids[rows]),
        labels=labels[rows],
        splits=splits[rows],
        classes=classes,
        layers=layers,
        dtype=dtype,
        rows_per_chunk=rows_per_chunk,
        attrs={
            **attrs,
            "parent_key": attrs["key"],
            "part": part.index,
            "first_row": part.first_row,
        },
    ).close()


def _map_parts(f: h5py.File, path: Path, parts, n: int, n_chunks: int, layers, dtype) -> None:
    """The virtual datasets of the top-level file over its parts (relative paths)."""

    def virtual(name: str, shape: tuple, kind, by_rows: bool, fill) -> h5py.Dataset:
        layout = h5py.VirtualLayout(shape=shape, dtype=kind)
        for part in parts:
            a, b = (
                (part.first_row, part.stop_row) if by_rows else (part.first_chunk, part.stop_chunk)
            )
            source = str(part.path.relative_to(path.parent).as_posix())
            layout[a:b] = h5py.VirtualSource(source, name, shape=(b - a, *shape[1:]))
        return f.create_virtual_dataset(name, layout, fillvalue=fill)

    for name, (dim, pooling) in layers.items():
        ds = virtual(f"{schema.FEATURES}/{name}", (n, int(dim)), np.dtype(dtype), True, 0)
        ds.attrs.update(layer=name, pooling=pooling, dim=int(dim), dtype=dtype)
    virtual(schema.SAMPLES_OK, (n,), bool, True, False)
    virtual(schema.CHUNK_DONE, (n_chunks,), bool, False, False)
    virtual(schema.CHUNK_SECONDS, (n_chunks,), np.float64, False, 0.0)
    virtual(schema.CHUNK_RUN, (n_chunks,), np.float64, False, 0.0)


_CHUNK_FLAGS = (schema.CHUNK_DONE, schema.CHUNK_SECONDS, schema.CHUNK_RUN)  # one per chunk


def mapped_shapes(f: h5py.File) -> dict[str, tuple[int, ...]]:
    """The datasets the top-level file ``f`` maps from its parts (:func:`_map_parts`), each
    with the shape of one of its rows (or chunks): what :func:`lost_datasets` checks."""
    layers = schema.decode_attr("layers", f.attrs["layers"])
    names = [f"{schema.FEATURES}/{name}" for name in layers] + [schema.SAMPLES_OK, *_CHUNK_FLAGS]
    return {name: f[name].shape[1:] for name in names if name in f}


def lost_datasets(p: h5py.File, part: Part, shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """Why the open file ``p`` of part ``part`` is damaged: datasets the top-level file maps
    from it (``shapes``, from :func:`mapped_shapes`) that it lacks, e.g. deleted by hand, or
    holds in another shape (the map would read a slice of it, or fail); None when it has
    them all. Reads shapes only, no data. A writer resuming the part fails on either."""
    gone, wrong = [], []
    for name, tail in shapes.items():
        want = (part.stop_chunk - part.first_chunk if name in _CHUNK_FLAGS else part.rows, *tail)
        if name not in p:
            gone.append(name)
        elif p[name].shape != want:
            size = "x".join(map(str, p[name].shape))
            wrong.append(f"its {name} is {size} where the store maps {'x'.join(map(str, want))}")
    if gone:
        return f"it has no {', '.join(gone)} dataset{'s' * (len(gone) > 1)}, as every part file has"
    return "; ".join(wrong) or None


def open_failure(exc: BaseException) -> str:
    """Why a part file could not be opened or read (``exc``), in open_h5's words without its
    advice for a one-file store (delete it or --overwrite: every part recomputed)."""
    cause = exc.__cause__ if isinstance(exc, FeaturePipeError) else exc
    return unreadable_reason(cause) if isinstance(cause, OSError) else str(exc)


# -- checking ----------------------------------------------------------------------------------
def missing_parts(parts: Sequence[Part]) -> list[Part]:
    return [part for part in parts if not part.path.is_file()]


def missing_message(path: Path, missing: Sequence[Part], n_parts: int) -> str:
    names = listed((p.path for p in missing), total=len(missing))
    return (
        f"{path} is a parted store and {len(missing)} of its {n_parts} part files are "
        f"missing: {names}. Its features there would read as zeros. Rerun the same "
        "extraction (any number of processes) to recompute the missing parts, or restore the "
        f"files into {parts_dir(path)}."
    )


def damaged_part(part: Part, path: Path, reason: str) -> UnreadableStoreError:
    """The error for part ``part`` of the parted store at ``path`` being damaged (``reason``),
    with its fix: redoing that part alone, not the whole store."""
    error = UnreadableStoreError(
        f"{part.path}, part {part.index} of the parted store {path}, is damaged ({reason}), so "
        "its rows cannot be read through the store. Delete that file and run the same "
        "extraction again: only its rows are recomputed."
    )
    error.part = part  # featpipe cache list names it: deleting it alone keeps the other parts
    return error


def check_parts(path: Path, f: h5py.File, *, complete: bool) -> list[Part]:
    """The parts of the parted store ``f`` (its top-level file, at ``path``), each checked to
    be where its map reads them, to exist (MissingPartError names the first missing ones), to
    be a part of this store (same key, index and first row), and to open and hold every
    dataset the top-level file maps from it in the shape it maps (:func:`damaged_part` names
    one that does not). A part another process has open for writing is skipped unless the
    store is ``complete`` (its writer checks it)."""
    attrs = f.attrs
    parts = parts_of(path, attrs)
    check_renamed(path, f)
    missing = missing_parts(parts)
    if missing:
        raise MissingPartError(missing_message(path, missing, len(parts)))
    shapes = mapped_shapes(f)
    for part in parts:
        try:
            with open_h5(part.path) as p:
                # complete or not: another store's part copied in reads as this one's rows
                _check_identity(part, p.attrs, str(attrs.get("key", "")))
                lost = lost_datasets(p, part, shapes)
        except StoreInUseError:
            if complete:
                raise
            continue  # an incomplete store's part being written: its writer checks it
        except (OSError, UnreadableStoreError) as exc:  # cut short, overwritten: that part
            lost = open_failure(exc)
        if lost:
            raise damaged_part(part, path, lost)
    return parts


def mapped_folder(f: h5py.File) -> str | None:
    """The name of the folder the parted store ``f`` (its top-level file) reads its parts
    from, beside it; None when it maps none."""
    mapped = sorted(Path(s.file_name).parent.name for s in f[schema.CHUNK_DONE].virtual_sources())
    return mapped[0] if mapped else None


def renamed_from(path: Path, f: h5py.File) -> str | None:
    """The folder the parted store ``f`` (its top-level file, at ``path``) reads its parts
    from when that is not its own parts folder (the store was renamed); else None."""
    was = mapped_folder(f)
    return was if was is not None and was != parts_dir(path).name else None


def check_renamed(path: Path, f: h5py.File) -> None:
    """Refuse a top-level file whose map reads its parts from another folder than its parts
    folder: a store renamed (file and parts folder) reads every part as missing, zeros and
    chunks not done, and a rerun of its extraction cannot mend it."""
    was = renamed_from(path, f)
    if was is not None:
        raise MissingPartError(
            f"{path} reads its parts from the folder {was} beside it, not from "
            f"{parts_dir(path).name}: the "
            f"store was renamed, and its rows would read as missing. Rename it back to "
            f"{Path(was).stem}{path.suffix} and its parts folder back to {was}; for another "
            "name, consolidate it from there (featpipe consolidate, --out NEW.h5)."
        )


def _check_identity(part: Part, attrs, key: str) -> None:
    found = (
        schema.decode_attr("parent_key", attrs.get("parent_key")),
        int(attrs.get("part", -1)),
        int(attrs.get("first_row", -1)),
    )
    if found != (key, part.index, part.first_row):
        error = StoreMismatchError(
            f"{part.path} is not part {part.index} of store {key} (it says parent_key, part, "
            f"first_row = {found}; expected {(key, part.index, part.first_row)}). Delete it and "
            "rerun the same extraction to recompute it."
        )
        error.part = part  # as damaged_part's: featpipe cache list names it
        raise error


def part_complete(part: Part) -> bool:
    """Whether a part file is complete; False when it is missing or another process has it
    open for writing."""
    try:
        with open_h5(part.path) as p:
            return bool(p.attrs["complete"])
    except (OSError, FeaturePipeError):
        return False


def repair_missing(path: Path) -> list[Part]:
    """Recreate (empty) the missing part files of the parted store at ``path`` from its
    top-level file, and mark it incomplete; returns the parts recreated."""
    with open_h5(path) as f:
        attrs = schema.decode_attrs(f.attrs)
        parts = parts_of(path, f.attrs)
        missing = missing_parts(parts)
        if not missing:
            return []
        ids = f[schema.SAMPLES_ID].asstr()[()]
        labels, splits = f[schema.SAMPLES_LABEL][:], f[schema.SAMPLES_SPLIT][:]
        classes = list(f[schema.CLASSES].asstr()[()])
        layers = {
            name: (int(ds.attrs["dim"]), schema.decode_attr("pooling", ds.attrs["pooling"]))
            for name, ds in ((n, f[schema.FEATURES][n]) for n in attrs["layers"])
        }
    inputs = {k: attrs[k] for k in _PART_ATTRS if k in attrs}
    for part in missing:
        _create_part(
            part, ids, labels, splits, classes, layers, attrs["dtype"],
            int(attrs["rows_per_chunk"]), inputs,
        )  # fmt: skip
    with open_h5(path, "r+") as f:
        f.attrs["complete"] = False
        if schema.SAMPLES_ERROR in f:  # copied at completion: stale once a part is redone
            del f[schema.SAMPLES_ERROR]
    return missing


# The provenance attributes a part carries from its store (see Request.store_attrs).
_PART_ATTRS = (
    "key",
    "backbone",
    "weights_sha256",
    "preprocessing",
    "source_fingerprint",
    "source",
    "compute",
)


# -- finishing ---------------------------------------------------------------------------------
def finish_parted(path: Path, run: Mapping[str, Any]) -> bool:
    """Complete the parted store at ``path`` if every part is complete: verify each (complete,
    parent key, index, ids), copy the skip reasons into the top-level file, record the summed
    cost in its ``extraction`` attribute (with ``run``, the finishing run, the writers that
    filled its parts, the store's ``rows_per_chunk`` and its ``skipped`` row count) and set
    ``complete``. Returns False, changing nothing, while a part is not complete (or is open
    for writing). Call it holding the top-level file's lock."""
    with open_h5(path) as f:
        attrs = f.attrs
        key = schema.decode_attr("key", attrs["key"])
        if bool(attrs["complete"]):
            return True
        parts = parts_of(path, attrs)
        rows_per_chunk = int(attrs["rows_per_chunk"])
        ids = f[schema.SAMPLES_ID].asstr()[()]
    reasons = np.full(len(ids), "", dtype=object)
    costs, skipped = [], 0
    for part in parts:
        try:
            p = open_h5(part.path)
        except (OSError, FeaturePipeError):
            return False  # missing, or still open in its writer
        with p:
            if not bool(p.attrs["complete"]):
                return False
            _check_identity(part, p.attrs, key)
            if not np.array_equal(
                p[schema.SAMPLES_ID].asstr()[()], ids[part.first_row : part.stop_row]
            ):
                raise StoreMismatchError(
                    f"{part.path} holds other sample ids than rows {part.first_row} to "
                    f"{part.stop_row} of {path}. Delete it and rerun the same extraction."
                )
            bad = np.flatnonzero(~p[schema.SAMPLES_OK][:])
            skipped += len(bad)
            if len(bad):
                reasons[part.first_row + bad] = p[schema.SAMPLES_ERROR].asstr()[bad]
            costs.append(schema.decode_attr("extraction", p.attrs.get("extraction", "{}")))
    with open_h5(path, "r+") as f:
        if schema.SAMPLES_ERROR in f:
            del f[schema.SAMPLES_ERROR]
        f.create_dataset(schema.SAMPLES_ERROR, data=list(reasons), dtype=h5py.string_dtype())
        # the store's chunks, not the finishing run's --chunk-rows (a resume keeps the store's)
        # "skipped" as a one-file store records it, so a consolidated store's record matches
        cost = {
            **dict(run),
            "rows_per_chunk": rows_per_chunk,
            "skipped": skipped,
            **summed_cost(costs),
        }
        f.attrs["extraction"] = schema.encode_attr(cost)
        sync_h5(f)  # the skip reasons on disk before "complete" can be, as a writer does
        f.attrs["complete"] = True
        f.flush()
    return True


def summed_cost(costs: Sequence[Mapping[str, Any]]) -> dict:
    """The cost of a parted store from its parts' ``extraction`` attributes: images and
    (process-)seconds summed, the number of parts, and one run per writer (``filled_by``:
    ``rank 1/4``, ``shard 0/2``, ``one process``) with its images, seconds and parts."""
    writers: dict[str, dict] = {}
    for cost in costs:
        who = str(cost.get("filled_by") or "one process")
        w = writers.setdefault(who, {"filled_by": who, "images": 0, "seconds": 0.0, "parts": 0})
        w["images"] += int(cost.get("images") or 0)
        w["seconds"] += float(cost.get("seconds") or 0.0)
        w["parts"] += 1
    runs = [{**w, "seconds": round(w["seconds"], 3)} for _, w in sorted(writers.items())]
    images = sum(w["images"] for w in runs)
    seconds = sum(w["seconds"] for w in runs)
    return {
        "images": images,
        "seconds": round(seconds, 3),
        "images_per_s": round(images / seconds, 1) if seconds > 0 else 0.0,
        "parts": len(costs),
        "filled_by": [w["filled_by"] for w in runs],
        "runs": runs,
    }


def progress(path: str | Path) -> dict:
    """Parts done, being written (part file name: its writer's note) and pending, read part
    by part: what can be known of a parted store while processes write it, when HDF5 will
    not read its virtual datasets."""
    with open_h5(path) as f:  # the top-level file: only its attributes, no part is opened
        parts = parts_of(path, f.attrs)
    writing, done = {}, 0
    for part in parts:
        owner = holder(part.path)
        if owner is not None:
            writing[part.path.name] = owner
        elif part_complete(part):
            done += 1
    pending = len(parts) - done - len(writing)
    return {
        "parts": len(parts),
        "parts_done": done,
        "parts_writing": writing,
        "parts_pending": pending,
    }


def describe_parts(parts: Sequence[Part], chunk_done: np.ndarray) -> dict:
    """``{"parts", "parts_done", "parts_pending"}`` from the per-chunk flags."""
    done = [bool(np.all(chunk_done[p.first_chunk : p.stop_chunk])) for p in parts]
    return {"parts": len(parts), "parts_done": sum(done), "parts_pending": len(parts) - sum(done)}
