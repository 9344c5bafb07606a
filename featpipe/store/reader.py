"""Read-only access to a feature store (layout in ``featpipe.store.schema``)."""

from __future__ import annotations

import contextlib
import glob
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from featpipe.data.source import SPLIT_NAMES, count_splits, split_code
from featpipe.data.splits import id_order
from featpipe.errors import (
    ConfigError,
    FeaturePipeError,
    IncompleteStoreError,
    MissingPartError,
    NonFiniteFeaturesError,
    StoreInUseError,
    StoreMismatchError,
    StoreNotFoundError,
    UnreadableStoreError,
    unknown_name,
)
from featpipe.extras import import_extra
from featpipe.store import schema
from featpipe.store.files import lock_conflict, open_h5, unreadable
from featpipe.store.lock import ReadLock, describe_owner, holder
from featpipe.store.parts import (
    Part,
    check_parts,
    damaged_part,
    describe_parts,
    is_parted,
    missing_message,
    missing_parts,
    parts_dir,
)
from featpipe.store.schema import decode_attr, decode_attrs, rows_done
from featpipe.words import listed

SKIPPED_SHOWN = 5  # skipped images that info() names
IDS_SHOWN = 3  # ids of rows that are not finite that an error names
# The fix for a layer holding values that are not finite, in every message that finds one:
# in Python's words, with the extract flags that featpipe probe, info or export lack.
REEXTRACT = (
    "Extract it again with overwrite=True (CLI: featpipe extract --overwrite), and with "
    'dtype="float32" (CLI: featpipe extract --dtype float32) where the layer\'s activations '
    "exceed float16's 65504"
)


# What h5py raises for a file whose HDF5 structures are damaged (KeyError: an object header
# it cannot read; RuntimeError: attributes it cannot iterate).
DAMAGED = (KeyError, ValueError, TypeError, OSError, RuntimeError)


# How h5py reports a chunk that fails its fletcher32 checksum (the one filter on features).
CHECKSUM_FAILED = "filter returned failure during read"


def all_finite(block: np.ndarray) -> bool:
    """Whether every value of a float array is finite (vectorised: it runs on every chunk)."""
    if block.dtype == np.float16:  # numpy's float16 isfinite is slow: read the exponent bits
        return not ((np.ascontiguousarray(block).view(np.uint16) & 0x7C00) == 0x7C00).any()
    return bool(np.isfinite(block).all())


def _windows(positions: np.ndarray, rows: int, chunk: int) -> list[tuple[int, int]]:
    """``(start, stop)`` ranges of sorted ``positions``, each spanning at most ``rows`` stored
    rows and ending, where it can, before an HDF5 chunk (``chunk`` rows) that the next one
    starts in, so that a chunk is read (and checksummed) once unless its rows span more than
    ``rows``. All in one when they span ``rows`` or less."""
    windows, start = [], 0
    while start < len(positions):
        first = int(positions[start])
        stop = int(np.searchsorted(positions, first + rows))  # as far as ``rows`` reach
        if stop < len(positions):
            cut = int(positions[stop]) // chunk * chunk  # where the chunk of the next starts
            if cut > first:  # leave that chunk whole to the next window
                stop = int(np.searchsorted(positions, cut))
        windows.append((start, stop))
        start = stop
    return windows


def named_rows(ids: Sequence, count: int) -> str:
    """``'a', 'b', 'c' and 4 more`` for the ids of ``count`` rows (the first ones given)."""
    return listed((repr(str(i)) for i in ids), IDS_SHOWN, total=count)


def not_finite_message(path: Path, found: dict[str, dict]) -> str:
    """One sentence for the layers of :meth:`FeatureStore.non_finite` (not empty)."""
    layers = "; ".join(
        f"layer {name!r}: {v['rows']} row{'s' if v['rows'] > 1 else ''} ({v['kind']}; ids "
        f"{named_rows(v['ids'], v['rows'])})"
        for name, v in found.items()
    )
    return (
        f"{path} holds features that are not finite, which no head can be trained or tested "
        f"on: {layers}. The store was written by a featpipe that did not check features, or "
        f"by another tool. {REEXTRACT}."
    )


def _key_of(path: Path) -> str | None:
    """The key of the store at ``path``, or None when it cannot be read."""
    try:
        with open_h5(path) as f:
            return str(decode_attr("key", f.attrs.get("key", "")))
    except (OSError, FeaturePipeError):
        return None


def part_text(path: Path, part_of: dict) -> str:
    """``part_of`` (:meth:`FeatureStore.part_of` of the part file ``path``) in words."""
    first, stop = part_of["rows"]
    whole = (
        f"the parted store {part_of['store']}"
        if part_of["store"]
        else f"a parted store (key {part_of['parent_key']}) whose top-level file is not beside "
        f"{path.parent}"
    )
    return f"part {part_of['part']} (rows {first}-{stop - 1}) of {whole}"


def _not_found(path: Path) -> StoreNotFoundError:
    if path.is_dir():
        return StoreNotFoundError(
            f"{path} is a folder, not a feature store file. Give the path of a store's .h5 "
            f"file; `featpipe cache list {path}` lists the stores in that folder."
        )
    return StoreNotFoundError(
        f"No feature store at {path}: no such file. Check the path; `featpipe cache list "
        "[FOLDER]` lists the stores of a folder."
    )


class FeatureStore:
    """A read-only view of a store file. Construction reads only the attributes; each read
    opens the file, reads and closes it, so a store object is cheap and safe to keep around.
    Until :meth:`close` (or the end of a ``with`` block, or until it is garbage-collected) it
    holds a shared read lock (:class:`~featpipe.store.lock.ReadLock`) that keeps
    ``featpipe cache prune`` from deleting the store between two reads (``read_lock=False``:
    none); reads work after it.

    ``extraction`` holds the stats of the :func:`featpipe.extract.extract` call that returned
    this object (None otherwise).

    Rows skipped at extraction (``on_error="skip"``: an image that could not be read, or
    whose features were not finite) are left out of every read:
    :meth:`arrays`, :meth:`iter_chunks`, :meth:`ids`, :meth:`labels` and :meth:`split_counts`
    agree row for row; :meth:`skipped` lists them, and ``len(store)`` counts them. In an
    incomplete store, the rows of chunks not written yet are left out of them all as well
    (``arrays`` and ``iter_chunks`` read it only with ``allow_incomplete``).

    A part file of a parted store (:attr:`is_part`) holds only that part's rows: it opens and
    describes itself (:meth:`info`, :meth:`part_of`), but its rows (:meth:`arrays`,
    :meth:`iter_chunks`, :meth:`ids`, ...) are refused, naming the parted store to open
    instead, unless ``part`` is True (to read one part's rows on purpose: tests, debugging).
    """

    def __init__(self, path: str | Path, *, read_lock: bool = True, part: bool = False):
        self.path = Path(path)
        self._part_rows = part
        self.key = ""  # read with the layout: until then, no store to compare the file with
        self.extraction: dict | None = None
        self.parts: list[Part] | None = None
        self._reasons_checked = False  # once true (a complete store), _skipped trusts ok flags
        self._by_id: np.ndarray | None = None  # every stored row, in id order (id_positions)
        if not self.path.is_file():
            raise _not_found(self.path)
        with self._open() as f:
            try:
                self._check_format(f)
                self._read_layout(f)
            except FeaturePipeError:
                raise
            except DAMAGED as exc:
                raise unreadable(self.path, f"its layout is damaged ({exc})") from exc
        self._read_lock = ReadLock(self.path if read_lock else None)

    def close(self) -> None:
        """Release the read lock: ``featpipe cache prune`` may delete the store again."""
        self._read_lock.release()

    def _check_format(self, f: h5py.File) -> None:
        if f.attrs.get("format") != schema.FORMAT:
            raise unreadable(
                self.path,
                "it is an HDF5 file but not a featpipe store (its 'format' attribute is "
                f"{f.attrs.get('format')!r}, expected {schema.FORMAT!r})",
                # featpipe extract's flags: probe's or export's --out is not the store's
                "It may hold another program's data: give the path of a featpipe store, or "
                "extract to another out, or extract again with overwrite=True, which replaces "
                "it (CLI: featpipe extract --out, --overwrite)",
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
        # A parted store's features are virtual datasets that read zeros where a part file
        # is missing: every part must be there, sound, and a part of this store.
        if is_parted(f.attrs):
            self.parts = check_parts(self.path, f, complete=bool(f.attrs["complete"]))
        # A store is marked complete only after every chunk flag is set: a pending chunk in
        # one means damaged flags, which a rerun (it reuses a complete store) never repairs.
        pending = np.flatnonzero(~f[schema.CHUNK_DONE][:]) if f.attrs["complete"] else []
        if len(pending):
            n_chunks = f[schema.CHUNK_DONE].shape[0]
            reason = (
                f"it is marked complete, yet {len(pending)} of {n_chunks} chunks are not "
                f"marked done: its {schema.CHUNK_DONE} flags are damaged"
            )
            # in a parted store the flags are its parts': redoing the first such part mends it
            for part in self.parts or []:
                if part.first_chunk <= pending[0] < part.stop_chunk:
                    raise damaged_part(part, self.path, reason)
            raise unreadable(self.path, reason)

    def _open(self) -> h5py.File:
        try:
            f = open_h5(self.path)
        except FileNotFoundError:  # each read opens the file: it can go between two reads
            raise StoreNotFoundError(
                f"{self.path} is gone: it was deleted or moved after it was opened (e.g. by "
                "rm, or by `featpipe cache prune` while this reader held no read lock: its "
                "folder was read-only, or its file system has no flock). "
                "Extract it again, or give the path it was moved to."
            ) from None
        # Each read opens the path anew: a store written there since (an extraction with
        # --overwrite) would be read with this one's ids, labels and classes.
        now = str(decode_attr("key", f.attrs.get("key", ""))) if self.key else ""
        if now != self.key:
            f.close()
            raise StoreMismatchError(
                f"{self.path} was replaced by another store (key {now!r}, was {self.key!r}) "
                "after it was opened, e.g. by an extraction with --overwrite. "
                "Open it again to read the new store."
            )
        return f

    @contextlib.contextmanager
    def _reading(self) -> Iterator[h5py.File]:
        """The open file, for reads. A parted store's virtual datasets open its part files as
        they are read: one open for writing by another process (HDF5 locks it) raises
        StoreInUseError naming that process, not h5py's BlockingIOError. A read that HDF5
        fails on (a damaged file) raises UnreadableStoreError naming the file and the fix."""
        with self._open() as f:
            with self.read_errors():
                yield f
            self.check_present()

    @contextlib.contextmanager
    def read_errors(self) -> Iterator[None]:
        """HDF5 failing on a read of this store, inside the block, as the store's error: a
        part open for writing elsewhere, or damaged data (naming the file and the fix)."""
        try:
            yield
        except FeaturePipeError:
            raise
        except (OSError, KeyError, RuntimeError) as exc:
            if self.parts is not None and lock_conflict(exc):
                raise self._part_in_use() from exc
            raise unreadable(self.path, f"its data is damaged ({exc})") from exc

    def check_present(self, start: int = 0, stop: int | None = None) -> None:
        """Raise MissingPartError when a part file of rows ``[start, stop)`` (all rows when
        None) is gone. HDF5 reads a part it cannot open as zeros (False for flags), so a part
        deleted while the store is read (``featpipe cache prune``, rm) gave zeros, not an
        error: call it after each read of a parted store."""
        if self.parts is None:
            return
        stop = self._n if stop is None else stop
        parts = [p for p in self.parts if p.first_row < stop and p.stop_row > start]
        missing = missing_parts(parts)
        if missing:
            raise MissingPartError(missing_message(self.path, missing, len(self.parts)))

    def _part_in_use(self) -> StoreInUseError:
        busy = [(p, owner) for p in self.parts or [] if (owner := holder(p.path)) is not None]
        who = (
            f"{busy[0][0].path.name} by {describe_owner(busy[0][1])}"
            if busy
            else "one of its parts"
        )
        return StoreInUseError(
            f"{self.path} is being written by another process: a --shard task or torchrun "
            f"rank is writing {who}, and HDF5 cannot read a part while it is open for "
            "writing. Wait for that process to finish its part (the store is complete once "
            "every part is), then read it again."
        )

    def read_rows(self, ds: h5py.Dataset, layer: str, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` of the features of ``layer``; a chunk that fails its
        checksum is one UnreadableStoreError naming its rows and how to rewrite them, and a
        part file gone meanwhile a MissingPartError (:meth:`check_present`)."""
        try:
            rows = ds[start:stop]
        except OSError as exc:
            if CHECKSUM_FAILED not in str(exc):
                raise
            raise self._checksum_failed(ds, layer, start, stop) from exc
        self.check_present(start, stop)
        return rows

    def _checksum_failed(self, ds: h5py.Dataset, layer: str, start: int, stop: int):
        """The error for rows ``[start, stop)`` of which some chunk fails its checksum."""
        step = self.rows_per_chunk
        bad = []
        for first in range(start - start % step, stop, step):  # rare: read chunk by chunk
            try:
                ds[first : min(first + step, self._n)]
            except OSError:
                bad.append(first)
        first = bad[0] if bad else start
        spans = [f"{b} to {min(b + step, self._n) - 1}" for b in bad] or [f"{start} to {stop - 1}"]
        part = next((p for p in self.parts or [] if p.first_row <= first < p.stop_row), None)
        fix = (
            f"Delete {part.path} and run the same extraction again: it writes that part anew"
            if part is not None
            else "Extract it again with --overwrite (overwrite=True), or copy it again from "
            "an intact copy"
        )
        return UnreadableStoreError(
            f"{self.path}: rows {listed(spans, noun='chunk')} of layer {layer!r} fail their "
            "checksum: the file changed on disk after they were written (a failing disk, a "
            f"damaged copy), so their features cannot be trusted. {fix}."
        )

    # -- description ---------------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        """Whether every chunk is written (read from the file each time)."""
        with self._reading() as f:
            return bool(f.attrs["complete"])

    def chunk_done(self) -> np.ndarray:
        with self._reading() as f:
            return f[schema.CHUNK_DONE][:]

    def __len__(self) -> int:
        """Rows in the file, skipped rows included."""
        return self._n

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.path)!r}, n={self._n}, layers={self.layers})"

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()  # no file handle is held between calls: only the read lock

    def layer_info(self, layer: str) -> dict:
        """``{"dim", "pooling", "dtype"}`` of one stored layer."""
        self._check_layer(layer)
        return dict(self._layer_info[layer])

    def split_counts(self) -> dict[str, int]:
        """Rows per split, skipped and unwritten rows left out."""
        return count_splits(self._splits()[self._rows(None)])

    def ids(self, split: str | None = None) -> list[str]:
        """Sample ids of one split (all when None), skipped and unwritten rows left out: in the
        order of the rows of :meth:`arrays` with the same split."""
        with self._reading() as f:
            ids = f[schema.SAMPLES_ID].asstr()[()]
        return [str(ids[i]) for i in self._rows(split)]

    def split_rows(self, split: str | None = None) -> np.ndarray:
        """Positions in the file (0 to ``len(store) - 1``, increasing) of one split's rows (all
        when None), skipped and unwritten rows left out: the stored rows that :meth:`arrays`
        with ``allow_incomplete=True`` returns, e.g. to tell where a split lies in the file."""
        return self._rows(split)

    def labels(self, split: str | None = None) -> np.ndarray:
        """Labels of one split (all when None), skipped and unwritten rows left out."""
        with self._reading() as f:
            labels = f[schema.SAMPLES_LABEL][:]
        return labels[self._rows(split)].astype(np.int64)

    def skipped(self, split: str | None = None) -> dict[str, str]:
        """``{sample id: reason}`` of the rows of one split (all when None) whose image could
        not be read (extracted with ``on_error="skip"``), in row order."""
        with self._reading() as f:
            rows = np.flatnonzero(self._skipped(f) & self._in_split(split))
            if len(rows) == 0:
                return {}
            ids = f[schema.SAMPLES_ID].asstr()[rows]
            reasons = self._reasons(f, rows)
        return {str(i): str(r) for i, r in zip(ids, reasons, strict=True)}

    def _reasons(self, f: h5py.File, rows: np.ndarray) -> list[str]:
        """Why each of the skipped ``rows`` (increasing) was skipped."""
        if schema.SAMPLES_ERROR in f:
            return list(f[schema.SAMPLES_ERROR].asstr()[rows])
        return self._part_reasons(rows)  # a parted store not complete yet: in its parts

    def _part_reasons(self, rows: np.ndarray) -> list[str]:
        reasons = []
        for part in self.parts or []:
            mine = rows[(rows >= part.first_row) & (rows < part.stop_row)]
            if len(mine):
                with open_h5(part.path) as p:
                    reasons += list(p[schema.SAMPLES_ERROR].asstr()[mine - part.first_row])
        return reasons

    def attr_object(self, name: str) -> dict:
        """The JSON attribute ``name`` (``backbone``, ``source``) as featpipe writes it, an
        object ({} when absent). Anything else there is a damaged or foreign file's: refused
        here, where it is described, while its features still read."""
        value = self.attrs.get(name)
        if value is None:
            return {}
        if not isinstance(value, dict):
            shown = repr(value)
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise UnreadableStoreError(
                f"{self.path} is damaged or was not written by featpipe: its {name!r} "
                f"attribute is {shown}, where a store keeps a JSON object. Extract it again "
                "(--overwrite) for a store featpipe can describe."
            )
        return value

    def info(self, scan: bool = True) -> dict:
        """Everything ``featpipe info`` prints: provenance, layers, splits, completeness, and
        (``scan``: reading every feature once) :meth:`non_finite`, None when not scanned."""
        done = self.chunk_done()
        skipped = self.skipped()
        with self._reading() as f:  # the splits of the whole store, unwritten rows included
            listed = ~self._skipped(f)
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
            "splits": count_splits(self._splits()[listed]),
            "skipped": len(skipped),
            "skipped_first": dict(list(skipped.items())[:SKIPPED_SHOWN]),
            "skipped_not_finite": schema.count_not_finite(skipped.values()),
            "layers": {
                name: {"shape": [self._n, info["dim"]], **info}
                for name, info in self._layer_info.items()
            },
            "backbone": self.attr_object("backbone").get("spec"),
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
            "layout": "parts" if self.parts else "file",
            **(describe_parts(self.parts, done) if self.parts else {}),
            "non_finite": self.non_finite() if scan else None,
            "part_of": self.part_of(),
        }

    @property
    def is_part(self) -> bool:
        """Whether this file is one part of a parted store (it carries its parent's key)."""
        return "parent_key" in self.attrs

    def part_of(self) -> dict | None:
        """For a part file of a parted store (its rows only): which part, its rows, and the
        top-level file that holds every row (None when it is not beside the parts folder);
        None for any other store."""
        if not self.is_part:
            return None
        key, folder = str(self.attrs["parent_key"]), self.path.parent
        first = int(self.attrs.get("first_row", 0))
        found = None
        for name in sorted(folder.parent.glob(glob.escape(folder.stem) + "*")):
            if name.is_file() and parts_dir(name) == folder and _key_of(name) == key:
                found = str(name)
        return {
            "part": int(self.attrs.get("part", -1)),
            "rows": [first, first + self._n],
            "parent_key": key,
            "store": found,
        }

    SCAN_BYTES = 64 * 1024 * 1024  # what non_finite() reads at a time

    def non_finite(self) -> dict[str, dict]:
        """``{layer: {"rows", "ids", "kind"}}`` of the layers holding values that are not
        finite in rows that reads return (written, not skipped): how many rows, the first
        ids, and ``"NaN"``, ``"infinite"`` or ``"NaN and infinite"``; empty when every value
        is finite. Reads every layer once, whole chunks of about ``SCAN_BYTES`` at a time."""
        found = {}
        with self._reading() as f:
            kept = self._kept(f)
            for layer in self.layers:
                ds = f[schema.FEATURES][layer]
                chunks = self.SCAN_BYTES // max(1, ds.shape[1] * ds.dtype.itemsize)
                step = max(1, chunks // self.rows_per_chunk) * self.rows_per_chunk
                bad, nan, inf = [], False, False
                for start in range(0, self._n, step):
                    keep = kept[start : start + step]
                    if not keep.any():
                        continue
                    block = self.read_rows(ds, layer, start, start + len(keep))
                    if all_finite(block if keep.all() else block[keep]):
                        continue  # the usual case: one vectorised check per block
                    rows = ~np.isfinite(block).all(axis=1) & keep
                    nan |= bool(np.isnan(block[rows]).any())
                    inf |= bool(np.isinf(block[rows]).any())
                    bad.append(start + np.flatnonzero(rows))
                if bad:
                    rows = np.concatenate(bad)
                    ids = f[schema.SAMPLES_ID].asstr()[rows[:IDS_SHOWN]]
                    kind = " and ".join(k for k, v in (("NaN", nan), ("infinite", inf)) if v)
                    found[layer] = {"rows": len(rows), "ids": [str(i) for i in ids], "kind": kind}
        return found

    # -- features ------------------------------------------------------------------------------
    def arrays(
        self,
        layer: str,
        split: str | None = None,
        *,
        allow_incomplete: bool = False,
        dtype: Any = np.float32,
        order: Sequence[int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Features ``X`` (n, D) and labels ``y`` (n,) of one layer and split (all rows when
        ``split`` is None). An incomplete store raises unless ``allow_incomplete``, which
        returns only the rows of finished chunks.

        ``order``: distinct positions among the split's rows (as :meth:`ids` lists them), to
        return those rows only, in that order (``X[i]`` is row ``order[i]``). Each block read
        is put in place as it comes, so memory holds the result and one block, never the
        split twice."""
        mask = self._row_mask(split, allow_incomplete)
        place = None  # where each row read goes in X: in stored order unless ``order``
        if order is not None:
            mask, place = self._ordered(mask, order)
        X = np.empty((int(mask.sum()), self.layer_info(layer)["dim"]), dtype=dtype)
        y = np.empty(len(X), dtype=np.int64)
        filled = 0
        for xb, yb in self._blocks(layer, mask, self.rows_per_chunk * 8, dtype):
            rows = slice(filled, filled + len(xb))
            to = rows if place is None else place[rows]
            X[to], y[to] = xb, yb
            filled += len(xb)
        return X, y

    def _ordered(self, mask: np.ndarray, order: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """The rows of ``mask`` at positions ``order``, as a mask, and the place in the result
        of each, in stored order."""
        order = np.asarray(order, dtype=np.int64).reshape(-1)
        stored = np.flatnonzero(mask)
        repeated = len(order) - len(np.unique(order))
        if repeated or not ((order >= 0) & (order < len(stored))).all():
            raise ConfigError(
                f"order must list distinct positions among the split's {len(stored)} rows "
                f"(0 to {len(stored) - 1}); got positions from {order.min(initial=0)} to "
                f"{order.max(initial=0)}, {repeated} repeated."
            )
        picked = np.zeros_like(mask)
        picked[stored[order]] = True
        return picked, np.argsort(order, kind="stable")

    def iter_chunks(
        self,
        layer: str,
        split: str | None = None,
        rows: int | None = None,
        *,
        allow_incomplete: bool = False,
        dtype: Any = np.float32,
        order: Sequence[int] | None = None,
        by_id: bool = False,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(X, y)`` blocks of one layer and split, reading at most ``rows`` stored rows at a
        time (default: the store's chunk size), so memory stays bounded. ``order`` visits the
        blocks (block i: stored rows ``i*rows`` to ``(i+1)*rows``) in that order instead of the
        file's, for training that must not see the rows grouped as they were stored.

        ``by_id``: block i holds instead the split's rows whose ids rank from ``i*rows`` to
        ``(i+1)*rows`` among all the file's ids, in id order (``data.splits.id_order``), so
        that the same images listed in another order read as the same blocks; a file in id
        order reads as without it. Memory still holds a block and ``rows`` stored rows, but
        in a file far from id order each block gathers its rows from many stored blocks, and
        a pass reads more of the file the more blocks there are."""
        mask = self._row_mask(split, allow_incomplete)
        yield from self._chunks(layer, mask, rows, dtype, order, by_id)

    def _chunks(
        self,
        layer: str,
        mask: np.ndarray,
        rows: int | None,
        dtype: Any,
        order: Sequence[int] | None,
        by_id: bool,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The blocks of :meth:`iter_chunks` holding the rows of ``mask``."""
        rows = self.rows_per_chunk if rows is None else int(rows)
        if rows < 1:
            raise ConfigError(f"rows must be at least 1; got {rows}.")
        if not by_id:
            yield from self._blocks(layer, mask, rows, dtype, order)
            return
        self._check_layer(layer)
        by_id_rows = self.id_positions()
        with self._reading() as f:
            ds, labels = f[schema.FEATURES][layer], f[schema.SAMPLES_LABEL]  # open throughout
            for i in range(math.ceil(self._n / rows)) if order is None else order:
                positions = by_id_rows[i * rows : (i + 1) * rows]
                positions = positions[mask[positions]]
                if len(positions):
                    yield self._gather(f, ds, labels, layer, positions, rows, dtype)

    def _gather(
        self,
        f: h5py.File,
        ds: h5py.Dataset,
        labels: h5py.Dataset,
        layer: str,
        positions: np.ndarray,
        rows: int,
        dtype: Any,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The rows at stored ``positions``, in that order, read at most ``rows`` stored rows
        at a time. A run of increasing positions (a store in id order) is read as plain
        slices; others in stored order, window by window, each HDF5 chunk read once."""
        ascending = bool((np.diff(positions) > 0).all())
        place = None if ascending else np.argsort(positions, kind="stable")
        wanted = positions if ascending else positions[place]
        windows = _windows(wanted, rows, self.rows_per_chunk)
        if ascending and len(windows) == 1 and wanted[-1] - wanted[0] + 1 == len(wanted):
            lo, hi = int(wanted[0]), int(wanted[-1]) + 1  # one slice: yield it as read
            return self._window(f, ds, labels, layer, lo, hi, None, dtype)
        X = np.empty((len(positions), ds.shape[1]), dtype)
        y = np.empty(len(positions), np.int64)
        for start, stop in windows:
            lo, hi = int(wanted[start]), int(wanted[stop - 1]) + 1
            keep = None
            if hi - lo > stop - start:  # rows inside the span are left out
                keep = np.zeros(hi - lo, bool)
                keep[wanted[start:stop] - lo] = True
            to = slice(start, stop) if place is None else place[start:stop]
            X[to], y[to] = self._window(f, ds, labels, layer, lo, hi, keep, dtype)
        return X, y

    def _window(
        self,
        f: h5py.File,
        ds: h5py.Dataset,
        labels: h5py.Dataset,
        layer: str,
        lo: int,
        hi: int,
        keep: np.ndarray | None,
        dtype: Any,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Stored rows ``[lo, hi)`` (those of ``keep`` only, when given) as ``dtype``, and
        their labels; a value that is not finite raises NonFiniteFeaturesError."""
        stored = self.read_rows(ds, layer, lo, hi)
        if keep is not None:
            stored = stored[keep]
        with np.errstate(over="ignore"):  # an overflow is reported just below
            block = stored.astype(dtype, copy=False)
        # Not finite: a store written before writes were checked, or a narrower dtype
        # asked for than stored (a value that is not finite stays so when cast).
        if not all_finite(block):
            rows = lo + (np.arange(hi - lo) if keep is None else np.flatnonzero(keep))
            raise self._not_finite(f, layer, stored, block, rows)
        y = labels[lo:hi]
        return block, (y if keep is None else y[keep])

    def id_positions(self) -> np.ndarray:
        """Every stored row's position (skipped and unwritten rows too), in id order: the
        order :meth:`iter_chunks` with ``by_id=True`` reads the rows in. Read once and kept
        (the ids never change in a file); a store in id order gives ``arange`` of its rows."""
        if self._by_id is None:
            with self._reading() as f:
                ids = f[schema.SAMPLES_ID].asstr()[()]
            self._by_id = id_order(ids, len(ids))
        return self._by_id

    def _blocks(
        self,
        layer: str,
        mask: np.ndarray,
        rows: int,
        dtype: Any,
        order: Sequence[int] | None = None,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        self._check_layer(layer)
        with self._reading() as f:
            ds = f[schema.FEATURES][layer]
            labels = f[schema.SAMPLES_LABEL]  # read a block's at a time, as its features
            starts = range(0, self._n, rows)
            for start in starts if order is None else (starts[i] for i in order):
                keep = mask[start : start + rows]
                if not keep.any():
                    continue
                # Only the span from the first row kept to the last (rows picked by an order
                # may fill a small part of the block).
                kept = np.flatnonzero(keep)
                lo, hi = start + kept[0], start + kept[-1] + 1
                inside = keep[lo - start : hi - start]
                gaps = len(kept) < hi - lo  # a copy only when rows inside the span are left out
                yield self._window(f, ds, labels, layer, lo, hi, inside if gaps else None, dtype)

    def _not_finite(
        self, f: h5py.File, layer: str, stored: np.ndarray, block: np.ndarray, rows: np.ndarray
    ) -> NonFiniteFeaturesError:
        """The error for a block read with values that are not finite (``rows``: its rows)."""
        bad = ~np.isfinite(block).all(axis=1)
        ids = f[schema.SAMPLES_ID].asstr()[rows[bad][:IDS_SHOWN]]
        count = int(bad.sum())
        where = f"{count} row{'s' if count > 1 else ''} (ids {named_rows(ids, count)})"
        if all_finite(stored):  # finite as stored: the dtype asked for overflowed
            return NonFiniteFeaturesError(
                f"Layer {layer!r} of {self.path} read as {block.dtype} overflows in {where}: "
                f"its values reach {float(np.abs(stored).max()):g}, beyond "
                f"{block.dtype}'s {float(np.finfo(block.dtype).max):g}. Read it as float32 "
                "(dtype=np.float32, the default)."
            )
        kind = "NaN" if np.isnan(stored).any() else "infinite"
        return NonFiniteFeaturesError(
            f"Layer {layer!r} of {self.path} holds values that are not finite ({kind}) in "
            f"{where}, which no head can be trained or tested on. The store was written by a "
            f"featpipe that did not check features, or by another tool. {REEXTRACT}."
        )

    def to_pandas(self, layer: str, split: str | None = None, *, dtype: Any = np.float32):
        """A pandas DataFrame of one layer and split (all when None): columns ``id``,
        ``split``, ``label``, ``class`` and ``features`` (one 1-D array per row), in the row
        order of :meth:`arrays`. Needs pandas (``pip install "featpipe[parquet]"``)."""
        pd = import_extra("pandas", "parquet", "FeatureStore.to_pandas")
        X, y = self.arrays(layer, split, dtype=dtype)
        rows = self._rows(split)
        names = np.asarray(SPLIT_NAMES)[self._splits()[rows]]
        return pd.DataFrame(
            {
                "id": self.ids(split),
                "split": names,
                "label": y,
                "class": np.asarray(self.classes, dtype=object)[y],
                "features": list(X),
            }
        )

    # -- helpers -------------------------------------------------------------------------------
    def _check_layer(self, layer: str) -> None:
        if layer not in self._layer_info:
            raise unknown_name("layer", layer, self._layer_info, hint=f"Stored in {self.path}.")

    def _splits(self) -> np.ndarray:
        with self._reading() as f:
            return f[schema.SAMPLES_SPLIT][:]

    def _written(self, f: h5py.File) -> np.ndarray:
        """Per-row bool: the row's chunk is done."""
        return rows_done(f[schema.CHUNK_DONE][:], self.rows_per_chunk, self._n)

    def _skipped(self, f: h5py.File) -> np.ndarray:
        """Per-row bool: written, and its image could not be read (a row's ok flag means
        nothing until its chunk is done)."""
        if schema.SAMPLES_OK not in f:  # format 1: no row is ever skipped
            return np.zeros(self._n, dtype=bool)
        skipped = self._written(f) & ~f[schema.SAMPLES_OK][:]
        if self._reasons_checked:
            return skipped
        # The writer records a reason for every skipped row: a skipped row without one is a
        # damaged ok flag (a zeroed chunk passes its checksum), not a row to drop unnoticed.
        # Checked once in a complete store (its rows no longer change), on each read before.
        rows = np.flatnonzero(skipped)
        reasons = self._reasons(f, rows) if len(rows) else []
        blank = [int(r) for r, why in zip(rows, reasons, strict=True) if not why]
        if blank:
            raise unreadable(
                self.path,
                f"{len(blank)} rows of finished chunks (between rows {blank[0]} and "
                f"{blank[-1]}) are marked skipped with no reason recorded: its "
                f"{schema.SAMPLES_OK} flags are damaged",
            )
        self._reasons_checked = bool(f.attrs["complete"])
        return skipped

    def _kept(self, f: h5py.File) -> np.ndarray:
        """Per-row bool: the rows every read returns, those written and not skipped. Rows of
        chunks not done yet are left out, as arrays(allow_incomplete=True) leaves them out,
        so that ids and labels line up with the features row for row."""
        return self._written(f) & ~self._skipped(f)

    def _in_split(self, split: str | None) -> np.ndarray:
        if split is None:
            return np.ones(self._n, dtype=bool)
        return self._splits() == split_code(split)

    def _rows(self, split: str | None) -> np.ndarray:
        """Row indices of ``split`` (all when None), skipped and unwritten rows left out."""
        if self.is_part and not self._part_rows:  # every read of rows comes here
            raise StoreMismatchError(
                f"{self.path} is {part_text(self.path, self.part_of())}, and holds only those "
                "rows: give the parted store's top-level file instead, for all its rows."
            )
        with self._reading() as f:
            kept = self._kept(f)
        return np.flatnonzero(kept & self._in_split(split))

    def require_complete(self, action: str | None = None) -> None:
        """Refuse (IncompleteStoreError) a store with chunks not written yet. ``action`` (e.g.
        "export") names a command, which reads whole stores only; without one, the way out
        also offers allow_incomplete=True. (A store marked complete with chunks not done is
        damaged, and refused so when opened.)"""
        done = self.chunk_done()
        if done.all():
            return
        missing = f"{int((~done).sum())} of {len(done)} chunks are not written yet"
        call = "the same `featpipe extract` (or extract()) call"
        if action is None:
            raise IncompleteStoreError(
                f"{self.path} is incomplete: {missing}. Rerun {call} to resume it, or pass "
                "allow_incomplete=True to read the finished rows only."
            )
        raise IncompleteStoreError(
            f"Cannot {action} {self.path}: the store is incomplete ({missing}). Wait for its "
            f"extraction to finish, or resume it by rerunning {call}; `featpipe info {self.path}` "
            f"shows its progress. Then {action} again."
        )

    def _row_mask(self, split: str | None, allow_incomplete: bool) -> np.ndarray:
        """Rows of ``split`` whose chunk is done, skipped rows left out; raises on missing
        chunks unless allowed."""
        if not allow_incomplete:
            self.require_complete()
        mask = np.zeros(self._n, dtype=bool)
        mask[self._rows(split)] = True
        return mask
