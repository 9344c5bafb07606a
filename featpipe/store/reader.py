"""Read-only access to a feature store (layout in ``featpipe.store.schema``)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from featpipe.data.source import SPLIT_CODES, SPLIT_NAMES, count_splits
from featpipe.errors import ConfigError, IncompleteStoreError, StoreMismatchError, unknown_name
from featpipe.store import schema
from featpipe.store.files import open_h5, unreadable
from featpipe.store.schema import decode_attrs, rows_done

SKIPPED_SHOWN = 5  # skipped images that info() names


class FeatureStore:
    """A read-only view of a store file. Construction reads only the attributes; each read
    opens the file, reads and closes it, so a store object is cheap and safe to keep around.

    ``extraction`` holds the stats of the :func:`featpipe.extract.extract` call that returned
    this object (None otherwise).

    Rows whose image could not be read (``on_error="skip"``) are left out of every read:
    :meth:`arrays`, :meth:`iter_chunks`, :meth:`ids`, :meth:`labels` and :meth:`split_counts`
    agree row for row; :meth:`skipped` lists them, and ``len(store)`` counts them.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.extraction: dict | None = None
        if not self.path.is_file():
            raise FileNotFoundError(f"No feature store at {self.path}.")
        with self._open() as f:
            if f.attrs.get("format") != schema.FORMAT:
                raise unreadable(
                    self.path,
                    "it is an HDF5 file but not a featpipe store (its 'format' attribute is "
                    f"{f.attrs.get('format')!r}, expected {schema.FORMAT!r})",
                )
            try:
                version = int(f.attrs["format_version"])
            except (KeyError, TypeError, ValueError) as exc:
                raise unreadable(self.path, "its format_version attribute is missing") from exc
            if version > schema.FORMAT_VERSION:
                raise StoreMismatchError(
                    f"{self.path} has store format version {version}; this featpipe reads up to "
                    f"{schema.FORMAT_VERSION}. Upgrade featpipe."
                )
            try:
                self._read_layout(f)
            except (KeyError, ValueError, TypeError, OSError) as exc:
                raise unreadable(self.path, f"its layout is damaged ({exc})") from exc

    def _read_layout(self, f: h5py.File) -> None:
        self.attrs: dict[str, Any] = decode_attrs(f.attrs)
        self.classes: list[str] = list(f[schema.CLASSES].asstr()[()])
        self._n = int(f[schema.SAMPLES_LABEL].shape[0])
        self.layers: list[str] = list(self.attrs["layers"])
        self._layer_info = {
            name: {
                "dim": int(ds.attrs["dim"]),
                "pooling": schema.decode_attr("pooling", ds.attrs["pooling"]),
                "dtype": schema.decode_attr("dtype", ds.attrs["dtype"]),
            }
            for name, ds in ((n, f[schema.FEATURES][n]) for n in self.layers)
        }
        self.key: str = str(self.attrs.get("key", ""))
        self.rows_per_chunk = int(self.attrs["rows_per_chunk"])
        if schema.CHUNK_DONE not in f:
            raise KeyError(f"no {schema.CHUNK_DONE} dataset")

    def _open(self) -> h5py.File:
        return open_h5(self.path)

    # -- description ---------------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        """Whether every chunk is written (read from the file each time)."""
        with self._open() as f:
            return bool(f.attrs["complete"])

    def chunk_done(self) -> np.ndarray:
        with self._open() as f:
            return f[schema.CHUNK_DONE][:]

    def __len__(self) -> int:
        """Rows in the file, skipped rows included."""
        return self._n

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.path)!r}, n={self._n}, layers={self.layers})"

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc) -> None:
        return None  # no handle is held between calls

    def layer_info(self, layer: str) -> dict:
        """``{"dim", "pooling", "dtype"}`` of one stored layer."""
        self._check_layer(layer)
        return dict(self._layer_info[layer])

    def split_counts(self) -> dict[str, int]:
        """Rows per split, skipped rows left out."""
        return count_splits(self._splits()[self._rows(None)])

    def ids(self, split: str | None = None) -> list[str]:
        """Sample ids of one split (all when None), skipped rows left out: in the order of the
        rows of :meth:`arrays` with the same split."""
        with self._open() as f:
            ids = f[schema.SAMPLES_ID].asstr()[()]
        return [str(ids[i]) for i in self._rows(split)]

    def labels(self, split: str | None = None) -> np.ndarray:
        """Labels of one split (all when None), skipped rows left out."""
        with self._open() as f:
            labels = f[schema.SAMPLES_LABEL][:]
        return labels[self._rows(split)].astype(np.int64)

    def skipped(self, split: str | None = None) -> dict[str, str]:
        """``{sample id: reason}`` of the rows of one split (all when None) whose image could
        not be read (extracted with ``on_error="skip"``), in row order."""
        with self._open() as f:
            rows = np.flatnonzero(~self._kept(f) & self._in_split(split))
            if len(rows) == 0:
                return {}
            ids = f[schema.SAMPLES_ID].asstr()[rows]
            reasons = f[schema.SAMPLES_ERROR].asstr()[rows]
        return {str(i): str(r) for i, r in zip(ids, reasons, strict=True)}

    def info(self) -> dict:
        """Everything ``featpipe info`` prints: provenance, layers, splits, completeness."""
        done = self.chunk_done()
        skipped = self.skipped()
        a = self.attrs
        return {
            "path": str(self.path),
            "format": f"{a['format']} v{a['format_version']}",
            "key": self.key,
            "complete": self.complete,
            "chunks_done": int(done.sum()),
            "chunks_total": len(done),
            "rows_per_chunk": self.rows_per_chunk,
            "samples": self._n,
            "classes": self.classes,
            "splits": self.split_counts(),
            "skipped": len(skipped),
            "skipped_first": dict(list(skipped.items())[:SKIPPED_SHOWN]),
            "layers": {
                name: {"shape": [self._n, info["dim"]], **info}
                for name, info in self._layer_info.items()
            },
            "backbone": a.get("backbone", {}).get("spec"),
            "weights_sha256": a.get("weights_sha256"),
            "preprocessing": a.get("preprocessing"),
            "source_fingerprint": a.get("source_fingerprint"),
            "source": a.get("source"),
            "compute": a.get("compute"),
            "featpipe_version": a.get("featpipe_version"),
            "versions": a.get("versions"),
            "created": a.get("created"),
            "extraction": a.get("extraction"),
            "file_size": self.path.stat().st_size,
        }

    # -- features ------------------------------------------------------------------------------
    def arrays(
        self,
        layer: str,
        split: str | None = None,
        *,
        allow_incomplete: bool = False,
        dtype: Any = np.float32,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Features ``X`` (n, D) and labels ``y`` (n,) of one layer and split (all rows when
        ``split`` is None). An incomplete store raises unless ``allow_incomplete``, which
        returns only the rows of finished chunks."""
        mask = self._row_mask(split, allow_incomplete)
        X = np.empty((int(mask.sum()), self.layer_info(layer)["dim"]), dtype=dtype)
        y = np.empty(len(X), dtype=np.int64)
        filled = 0
        for xb, yb in self._blocks(layer, mask, self.rows_per_chunk * 8, dtype):
            X[filled : filled + len(xb)] = xb
            y[filled : filled + len(yb)] = yb
            filled += len(xb)
        return X, y

    def iter_chunks(
        self,
        layer: str,
        split: str | None = None,
        rows: int | None = None,
        *,
        allow_incomplete: bool = False,
        dtype: Any = np.float32,
        order: Sequence[int] | None = None,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(X, y)`` blocks of one layer and split, reading at most ``rows`` stored rows at a
        time (default: the store's chunk size), so memory stays bounded. ``order`` visits the
        blocks (block i: stored rows ``i*rows`` to ``(i+1)*rows``) in that order instead of the
        file's, for training that must not see the rows grouped as they were stored."""
        rows = self.rows_per_chunk if rows is None else int(rows)
        if rows < 1:
            raise ConfigError(f"rows must be at least 1; got {rows}.")
        self.layer_info(layer)
        mask = self._row_mask(split, allow_incomplete)
        yield from self._blocks(layer, mask, rows, dtype, order)

    def _blocks(
        self,
        layer: str,
        mask: np.ndarray,
        rows: int,
        dtype: Any,
        order: Sequence[int] | None = None,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        self._check_layer(layer)
        with self._open() as f:
            ds = f[schema.FEATURES][layer]
            labels = f[schema.SAMPLES_LABEL][:]
            starts = range(0, self._n, rows)
            for start in starts if order is None else (starts[i] for i in order):
                keep = mask[start : start + rows]
                if not keep.any():
                    continue
                block = ds[start : start + len(keep)][keep]
                yield block.astype(dtype, copy=False), labels[start : start + len(keep)][keep]

    # -- helpers -------------------------------------------------------------------------------
    def _check_layer(self, layer: str) -> None:
        if layer not in self._layer_info:
            raise unknown_name("layer", layer, self._layer_info, hint=f"Stored in {self.path}.")

    def _splits(self) -> np.ndarray:
        with self._open() as f:
            return f[schema.SAMPLES_SPLIT][:]

    def _kept(self, f: h5py.File) -> np.ndarray:
        """Per-row bool: not skipped (rows of chunks not done yet count as kept)."""
        if schema.SAMPLES_OK not in f:  # format 1: no row is ever skipped
            return np.ones(self._n, dtype=bool)
        done = rows_done(f[schema.CHUNK_DONE][:], self.rows_per_chunk, self._n)
        return ~done | f[schema.SAMPLES_OK][:]

    def _in_split(self, split: str | None) -> np.ndarray:
        if split is None:
            return np.ones(self._n, dtype=bool)
        return self._splits() == self._split_code(split)

    def _rows(self, split: str | None) -> np.ndarray:
        """Row indices of ``split`` (all when None), skipped rows left out."""
        with self._open() as f:
            kept = self._kept(f)
        return np.flatnonzero(kept & self._in_split(split))

    @staticmethod
    def _split_code(split: str) -> int:
        if split not in SPLIT_CODES:
            raise unknown_name("split", split, SPLIT_NAMES)
        return SPLIT_CODES[split]

    def _row_mask(self, split: str | None, allow_incomplete: bool) -> np.ndarray:
        """Rows of ``split`` whose chunk is done, skipped rows left out; raises on missing
        chunks unless allowed."""
        done = self.chunk_done()
        mask = np.zeros(self._n, dtype=bool)
        mask[self._rows(split)] = True
        if done.all():
            return mask
        if not allow_incomplete:
            raise IncompleteStoreError(
                f"{self.path} is incomplete: {int((~done).sum())} of {len(done)} chunks are not "
                "written. Rerun the same `featpipe extract` (or extract()) call to resume it, or "
                "pass allow_incomplete=True to read the finished rows only."
            )
        return mask & rows_done(done, self.rows_per_chunk, self._n)

    # -- writing small stores ------------------------------------------------------------------
    @classmethod
    def from_arrays(
        cls,
        path: str | Path,
        features: Mapping[str, np.ndarray],
        labels: Sequence[int] | np.ndarray,
        splits: Sequence[str | int] | np.ndarray,
        classes: Sequence[str],
        ids: Sequence[str] | None = None,
        attrs: Mapping[str, Any] | None = None,
        dtype: str = "float32",
    ) -> FeatureStore:
        """Write a complete store from in-memory arrays (tests, Embedder) and open it.
        ``splits`` may be names ("train") or uint8 codes; ``attrs`` adds root attributes
        (a ``key`` among them names the store; otherwise one is hashed from the arrays)."""
        from featpipe.store.writer import StoreWriter

        features = {name: np.asarray(x) for name, x in features.items()}
        if not features:
            raise ConfigError("from_arrays needs at least one layer of features.")
        n = len(labels)
        for name, x in features.items():
            if x.ndim != 2 or len(x) != n:
                raise ConfigError(
                    f"Features of layer {name!r} must be (n, D) with n={n} rows; got {x.shape}."
                )
        codes = _split_codes(splits, n)
        ids = [str(i) for i in range(n)] if ids is None else [str(i) for i in ids]
        attrs = dict(attrs or {})
        attrs.setdefault("key", _hash_arrays(features, labels, codes))
        layers = {
            name: (x.shape[1], name.partition(":")[2] or "unknown") for name, x in features.items()
        }
        rows = max(1, min(n, 4096))
        with StoreWriter.create(
            path,
            ids=ids,
            labels=np.asarray(labels),
            splits=codes,
            classes=list(classes),
            layers=layers,
            dtype=dtype,
            rows_per_chunk=rows,
            attrs=attrs,
        ) as writer:
            for index in range(writer.n_chunks):
                start, stop = writer.chunk_rows(index)
                writer.write_chunk(index, {k: x[start:stop] for k, x in features.items()})
            writer.finish()
        return cls(path)


def _split_codes(splits: Sequence[str | int] | np.ndarray, n: int) -> np.ndarray:
    values = list(splits)
    if len(values) != n:
        raise ConfigError(f"splits must have one entry per row ({n}); got {len(values)}.")
    codes = []
    for v in values:
        if isinstance(v, str):
            codes.append(FeatureStore._split_code(v))
        elif int(v) in SPLIT_CODES.values():
            codes.append(int(v))
        else:
            raise ConfigError(f"Unknown split code {v!r}; valid codes: {dict(SPLIT_CODES)}.")
    return np.asarray(codes, dtype=np.uint8)


def _hash_arrays(features: Mapping[str, np.ndarray], labels: Any, codes: np.ndarray) -> str:
    import hashlib

    h = hashlib.sha256()
    for name in sorted(features):
        h.update(name.encode())
        h.update(np.ascontiguousarray(features[name]).tobytes())
    h.update(np.asarray(labels, dtype=np.int64).tobytes())
    h.update(codes.tobytes())
    return h.hexdigest()[:16]
