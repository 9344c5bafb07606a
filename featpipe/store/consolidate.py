"""``consolidate``: a parted store copied into one self-contained file (no virtual datasets),
for tools that read plain HDF5 or to ship a store as one file."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from featpipe.atomic import sync_placed
from featpipe.errors import (
    ConfigError,
    IncompleteStoreError,
    StoreInUseError,
    StoreWriteError,
)
from featpipe.store import schema
from featpipe.store.files import check_free_space, disk_refused, open_h5
from featpipe.store.lock import holder, in_use_message
from featpipe.store.parts import describe_parts
from featpipe.store.reader import FeatureStore, part_text
from featpipe.store.writer import (
    OUT,
    check_not_source,
    check_out_file,
    checked_chunk,
    copy_failed,
    create_checked,
    create_new,
    discard,
    file_id,
    replace_store_file,
)

PARTED_ONLY = ("layout", "part_chunks", "n_rows")  # root attributes of the parted layout


def consolidate(
    store: str | Path, out: str | Path, *, force: bool = False, block_chunks: int = 64
) -> FeatureStore:
    """Copy the complete parted store ``store`` into ``out``: the one-file layout, every
    dataset and attribute equal, features copied ``block_chunks`` chunks at a time (memory
    stays bounded). ``out`` is written under a temporary name and renamed when complete; an
    existing file there is kept unless ``force``, and ``out`` is never the store itself or
    inside its parts folder."""
    source = FeatureStore(store)  # checks every part is there and belongs to it
    out = Path(out)
    if source.is_part:
        raise ConfigError(
            f"{source.path} is {part_text(source.path, source.part_of())}: consolidate that "
            "parted store (give its top-level file) instead."
        )
    if source.parts is None:
        raise ConfigError(
            f"{source.path} is already one file (not a parted store); copy it as it is."
        )
    if not source.complete:
        pending = describe_parts(source.parts, source.chunk_done())["parts_pending"]
        raise IncompleteStoreError(
            f"{source.path} is not complete ({pending} parts pending): "
            "finish it by rerunning the same extraction, then consolidate it."
        )
    check_not_source(out, source.path)
    check_out_file(out, option=OUT, replace=force)
    owner = holder(out)  # an extraction writing a store there: --force would swap it under it
    if owner is not None:
        raise StoreInUseError(in_use_message(out, owner))
    out.parent.mkdir(parents=True, exist_ok=True)
    size = sum(part.path.stat().st_size for part in source.parts)
    check_free_space(out, size, "the consolidated store")
    tmp = out.with_name(out.name + ".tmp")
    busy = StoreInUseError(
        f"Another process is consolidating into {out} now ({tmp.name} is open for writing "
        f"there). Wait for it to finish: {out} is then complete."
    )
    made = None
    try:
        with open_h5(source.path) as f, create_new(tmp, busy) as g:
            made = file_id(g)
            for name, value in f.attrs.items():
                if name not in PARTED_ONLY:
                    g.attrs[name] = value
            _record_skipped(g, source)
            _copy(f, g, source, block_chunks)
            source.check_present()  # a part deleted meanwhile was copied as zeros
        replace_store_file(tmp, out, made, busy)
    except StoreInUseError:  # tmp is another's, or none: nothing to delete
        raise
    except BaseException as exc:
        discard(tmp, made)
        if isinstance(exc, (OSError, RuntimeError)) and disk_refused(exc):  # e.g. filled since
            raise copy_failed(out, exc) from exc
        raise
    sync_placed(out, StoreWriteError)
    return FeatureStore(out)


def _record_skipped(g: h5py.File, source: FeatureStore) -> None:
    """Add the skipped row count that a one-file store's ``extraction`` record has, to the
    record of a parted store finished before featpipe recorded it there."""
    if "extraction" not in g.attrs:
        return
    record = schema.decode_attr("extraction", g.attrs["extraction"])
    if "skipped" not in record:
        g.attrs["extraction"] = schema.encode_attr({**record, "skipped": len(source.skipped())})


def _copy(f: h5py.File, g: h5py.File, source: FeatureStore, block_chunks: int) -> None:
    rows_per_chunk = source.rows_per_chunk

    def visit(name: str, obj) -> None:
        if not isinstance(obj, h5py.Dataset):
            return
        if name.startswith(schema.FEATURES + "/"):
            n, dim = obj.shape
            chunks = (max(1, min(rows_per_chunk, n)), dim)
            # checksummed as the parts are (see writer._create_features)
            ds = g.create_dataset(
                name, shape=obj.shape, dtype=obj.dtype, chunks=chunks, fletcher32=True
            )
            step = rows_per_chunk * block_chunks
            layer = name[len(schema.FEATURES) + 1 :]
            for start in range(0, n, step):
                stop = min(n, start + step)
                with source.read_errors():  # not the write to the copy: that stays what it is
                    rows = source.read_rows(obj, layer, start, stop)
                ds[start:stop] = rows
        else:
            with source.read_errors():
                data = obj[()]
            if checked_chunk(name, rows_per_chunk) is not None:  # checksummed as a store's
                ds = create_checked(g, name, data, rows_per_chunk)
            else:
                kind = h5py.string_dtype() if h5py.check_string_dtype(obj.dtype) else obj.dtype
                ds = g.create_dataset(name, data=np.asarray(data), dtype=kind)
        for key, value in obj.attrs.items():
            ds.attrs[key] = value

    f.visititems(visit)
