"""Create or resume a store file and write it chunk by chunk (layout in ``schema``)."""

from __future__ import annotations

import datetime as dt
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from featpipe.data.source import SPLIT_NAMES
from featpipe.errors import ConfigError, StoreMismatchError
from featpipe.store import schema
from featpipe.store.schema import chunk_bounds, encode_attr, n_chunks_for


def _versions() -> dict:
    import torch
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "h5py": h5py.__version__,
        "numpy": np.__version__,
    }


def _featpipe_version() -> str:
    from featpipe import __version__

    return __version__


def _check_dtype(dtype: str) -> str:
    if not isinstance(dtype, str):  # np.float16, np.dtype("float32")
        dtype = np.dtype(dtype).name
    if dtype not in schema.DTYPES:
        raise ConfigError(f"Store dtype must be one of {', '.join(schema.DTYPES)}; got {dtype!r}.")
    return dtype


def _create_features(group: h5py.Group, name: str, n_rows: int, dim: int, rows: int, dtype: str):
    """A (n_rows, dim) dataset chunked (rows, dim) with every chunk allocated now, so that later
    writes change raw data only (a kill mid-write cannot damage HDF5 metadata). No fill value is
    written: chunk_done says which rows hold data."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_chunk((max(1, min(rows, n_rows)), dim))
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    space = h5py.h5s.create_simple((n_rows, dim))
    tid = h5py.h5t.py_create(np.dtype(dtype))
    h5py.h5d.create(group.id, name.encode(), tid, space, dcpl=dcpl)
    return group[name]


def _create_reasons(file: h5py.File, n_rows: int) -> None:
    """samples/error, allocated now; rows never written read as "" (see write_chunk)."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    tid = h5py.h5t.py_create(h5py.string_dtype(), logical=True)
    space = h5py.h5s.create_simple((n_rows,))
    h5py.h5d.create(file.id, schema.SAMPLES_ERROR.encode(), tid, space, dcpl=dcpl)


class StoreWriter:
    """Writes one store file: :meth:`create` lays it out, :meth:`open` resumes it;
    :meth:`write_chunk` fills a chunk (rows, then done flag, then flush); :meth:`finish`
    sets ``complete`` once every chunk is done. Use it as a context manager."""

    def __init__(self, file: h5py.File):
        self._file = file
        self.path = Path(file.filename)
        self.rows_per_chunk = int(file.attrs["rows_per_chunk"])
        self.n_rows = int(file[schema.SAMPLES_LABEL].shape[0])
        self.n_chunks = n_chunks_for(self.n_rows, self.rows_per_chunk)
        self.layers: list[str] = schema.decode_attr("layers", file.attrs["layers"])
        self.dtype = str(file.attrs["dtype"])
        # per-row ok flags and skip reasons (None in format 1 stores, where every row is ok)
        self._ok = file.get(schema.SAMPLES_OK)
        self._reasons = file.get(schema.SAMPLES_ERROR)

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
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
    ) -> StoreWriter:
        """Lay out a new store at ``path`` (replacing any file there): samples, classes and
        a (N, dim) dataset per layer (``layers`` maps name -> (dim, pooling)), all allocated.
        The file is built under a temporary name and renamed, so ``path`` never holds a
        half-made layout."""
        path = Path(path)
        dtype = _check_dtype(dtype)
        n = len(ids)
        labels = np.asarray(labels, dtype=np.int64)
        splits = np.asarray(splits, dtype=np.uint8)
        if not (len(labels) == len(splits) == n) or n == 0:
            raise ConfigError(
                f"A store needs ids, labels and splits of one non-zero length; got "
                f"{n}, {len(labels)}, {len(splits)}."
            )
        if rows_per_chunk < 1:
            raise ConfigError(f"rows_per_chunk must be at least 1; got {rows_per_chunk}.")
        bad = [name for name in layers if "/" in name or not name]
        if bad:
            raise ConfigError(f"Layer names must be non-empty and contain no '/'; got {bad}.")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        n_chunks = n_chunks_for(n, rows_per_chunk)
        text = h5py.string_dtype()
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = schema.FORMAT
            f.attrs["format_version"] = schema.FORMAT_VERSION
            f.attrs["featpipe_version"] = _featpipe_version()
            f.attrs["created"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            f.attrs["versions"] = encode_attr(_versions())
            for name, value in attrs.items():
                f.attrs[name] = encode_attr(value)
            f.attrs["layers"] = encode_attr(list(layers))
            f.attrs["dtype"] = dtype
            f.attrs["rows_per_chunk"] = int(rows_per_chunk)
            f.attrs["n_chunks"] = int(n_chunks)
            f.attrs["complete"] = False
            f.create_dataset(schema.SAMPLES_ID, data=list(ids), dtype=text)
            f.create_dataset(schema.SAMPLES_LABEL, data=labels)
            split_ds = f.create_dataset(schema.SAMPLES_SPLIT, data=splits)
            split_ds.attrs["names"] = list(SPLIT_NAMES)
            f.create_dataset(schema.SAMPLES_OK, data=np.zeros(n, dtype=bool))
            _create_reasons(f, n)
            f.create_dataset(schema.CLASSES, data=list(classes), dtype=text)
            group = f.create_group(schema.FEATURES)
            for name, (dim, pooling) in layers.items():
                ds = _create_features(group, name, n, int(dim), rows_per_chunk, dtype)
                ds.attrs.update(layer=name, pooling=pooling, dim=int(dim), dtype=dtype)
            f.create_dataset(schema.CHUNK_DONE, data=np.zeros(n_chunks, dtype=bool))
        os.replace(tmp, path)
        return cls.open(path)

    @classmethod
    def open(cls, path: str | Path) -> StoreWriter:
        """Open an existing store for resuming."""
        path = Path(path)
        try:
            file = h5py.File(path, "r+")
        except OSError as exc:
            raise StoreMismatchError(
                f"{path} cannot be opened as an HDF5 file for writing ({exc}). Delete it or "
                "pass overwrite=True (--overwrite) to replace it."
            ) from exc
        if file.attrs.get("format") != schema.FORMAT:
            file.close()
            raise StoreMismatchError(
                f"{path} is not a featpipe store (format attribute missing). Choose another "
                "path or pass overwrite=True (--overwrite) to replace it."
            )
        return cls(file)

    # -- writing -------------------------------------------------------------------------------
    def chunk_done(self) -> np.ndarray:
        return self._file[schema.CHUNK_DONE][:]

    def pending_chunks(self) -> list[int]:
        """Indices of the chunks not written yet, in order."""
        return [int(i) for i in np.flatnonzero(~self.chunk_done())]

    def chunk_rows(self, index: int) -> tuple[int, int]:
        if not 0 <= index < self.n_chunks:
            raise ConfigError(f"Chunk index {index} is outside [0, {self.n_chunks}).")
        return chunk_bounds(index, self.rows_per_chunk, self.n_rows)

    def write_chunk(
        self,
        index: int,
        features: Mapping[str, np.ndarray],
        *,
        errors: Mapping[int, str] | None = None,
    ) -> int:
        """Write every layer's rows of chunk ``index``, then its done flag, then flush.
        ``errors`` maps positions in the chunk to why that image was skipped: those rows are
        written as zeros and marked not ok. Returns the number of bytes of features written."""
        start, stop = self.chunk_rows(index)
        errors = dict(errors or {})
        ok = np.ones(stop - start, dtype=bool)
        ok[list(errors)] = False
        missing = set(self.layers) - set(features)
        if missing:
            raise ConfigError(f"Chunk {index} lacks features for layers {sorted(missing)}.")
        written = 0
        for name in self.layers:
            ds = self._file[schema.FEATURES][name]
            block = np.asarray(features[name], dtype=ds.dtype)
            if block.shape != (stop - start, ds.shape[1]):
                raise ConfigError(
                    f"Chunk {index} of layer {name!r} must have shape "
                    f"{(stop - start, ds.shape[1])}; got {block.shape}."
                )
            ds[start:stop] = np.where(ok[:, None], block, 0) if errors else block
            written += block.nbytes
        self._write_ok(start, ok, errors)
        self._file[schema.CHUNK_DONE][index] = True
        self._file.flush()
        return written

    def _write_ok(self, start: int, ok: np.ndarray, errors: Mapping[int, str]) -> None:
        if self._ok is None:
            if errors:
                raise StoreMismatchError(
                    f"{self.path} was made by an older featpipe (store format 1), which cannot "
                    "record skipped images. Pass overwrite=True (--overwrite) to rebuild it."
                )
            return
        self._ok[start : start + len(ok)] = ok
        old = self._reasons[start : start + len(ok)]
        for pos in range(len(ok)):
            # Only skipped rows get a string: each one written costs heap space, even "".
            # A row that failed in an earlier attempt at this chunk but not now is cleared.
            new = errors.get(pos, "")
            if (old[pos] or b"") != new.encode():
                self._reasons[start + pos] = new

    def skipped_count(self) -> int:
        """Rows of done chunks that were skipped."""
        if self._ok is None:
            return 0
        done = schema.rows_done(self.chunk_done(), self.rows_per_chunk, self.n_rows)
        return int((done & ~self._ok[:]).sum())

    def finish(self, extraction: Mapping[str, Any] | None = None) -> None:
        """Mark the store complete (only when every chunk is done), then flush."""
        pending = self.pending_chunks()
        if pending:
            raise ConfigError(
                f"Cannot mark {self.path} complete: {len(pending)} of {self.n_chunks} chunks "
                "are not written."
            )
        if extraction is not None:
            self._file.attrs["extraction"] = encode_attr(dict(extraction))
        self._file.attrs["complete"] = True
        self._file.flush()

    def close(self) -> None:
        if self._file.id.valid:
            self._file.close()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
