"""Create or resume a store file and write it chunk by chunk (layout in ``schema``)."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import numbers
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from featpipe._version import __version__
from featpipe.atomic import sync_placed
from featpipe.data.source import SPLIT_CODES, SPLIT_NAMES, split_code
from featpipe.errors import (
    ConfigError,
    NonFiniteFeaturesError,
    SourceError,
    StoreInUseError,
    StoreMismatchError,
    StoreWriteError,
)
from featpipe.provenance import versions
from featpipe.store import schema
from featpipe.store.files import (
    check_free_space,
    describe_failure,
    lock_conflict,
    open_h5,
    os_error_number,
    sync_h5,
    unreadable,
    unwritten_bytes,
)
from featpipe.store.lock import claimed
from featpipe.store.parts import parted_at, parts_dir
from featpipe.store.reader import IDS_SHOWN, FeatureStore, all_finite, named_rows
from featpipe.store.schema import chunk_bounds, encode_attr, n_chunks_for
from featpipe.words import listed


def _check_rows_per_chunk(rows: Any) -> int:
    """``rows`` as an int, after refusing what cannot size a chunk (0, 2.5, "8", True)."""
    if isinstance(rows, bool) or not isinstance(rows, numbers.Integral) or rows < 1:
        raise ConfigError(
            f"rows_per_chunk (rows per HDF5 chunk of the store) must be a whole number of at "
            f"least 1, e.g. 256; got {rows!r}."
        )
    return int(rows)


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
    # A checksum per chunk, checked by HDF5 on every read (plain h5py too): a flipped bit on
    # disk is an error, not a wrong number. It keeps chunks one size, so rewriting a chunk
    # still touches only its bytes; HDF5 writes every chunk (zeros) at creation.
    dcpl.set_fletcher32()
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


def _create_run_records(f: h5py.File, n_chunks: int) -> None:
    """Which run wrote each chunk (its start time) in how many seconds; written in full now,
    like ``chunk_done``, so that setting them later touches only raw data."""
    # Not checksummed: they only feed the cost record, and readers never read them (a
    # chunked dataset would add a B-tree whose damage no read would find).
    f.create_dataset(schema.CHUNK_SECONDS, data=np.zeros(n_chunks, dtype=np.float64))
    f.create_dataset(schema.CHUNK_RUN, data=np.zeros(n_chunks, dtype=np.float64))


# Done flags are set in groups, one fsync each, at most this often (a kill loses at most
# the chunks written since: a resume computes them again).
COMMIT_SECONDS = 0.5
# Flags per checksummed chunk of progress/chunk_done: setting one flag rewrites its chunk
# (read, checked, written back with its new checksum), so chunks stay small.
PROGRESS_CHUNK = 1024
# Entries per checksummed chunk of samples/label and samples/split (written once).
SAMPLES_CHUNK = 65536


def checked_chunk(name: str, rows_per_chunk: int = 0) -> int | None:
    """Entries per checksummed chunk of the 1-D dataset ``name`` (``rows_per_chunk``: the
    store's, for samples/ok); None for one kept without a checksum (ids, class names and
    reasons are variable-length strings, whose text HDF5 keeps outside the chunks; the cost
    records)."""
    return {
        schema.SAMPLES_LABEL: SAMPLES_CHUNK,
        schema.SAMPLES_SPLIT: SAMPLES_CHUNK,
        schema.SAMPLES_OK: rows_per_chunk,  # write_chunk rewrites exactly its chunk
        schema.CHUNK_DONE: PROGRESS_CHUNK,
    }.get(name)


def create_checked(
    f: h5py.File, name: str, data: np.ndarray, rows_per_chunk: int = 0
) -> h5py.Dataset:
    """The 1-D dataset ``name`` of ``data`` in chunks (:func:`checked_chunk`), each with a
    fletcher32 checksum that HDF5 checks on every read, as the features have (a flipped bit
    in a label or a done flag is an error, not a wrong number). Every chunk is written now,
    and a checksum keeps a chunk one size, so rewriting entries later touches only its bytes."""
    chunk = checked_chunk(name, rows_per_chunk)
    return f.create_dataset(
        name, data=data, chunks=(max(1, min(chunk, len(data))),), fletcher32=True
    )


def write_root(
    f: h5py.File,
    attrs: Mapping[str, Any],
    layers: Sequence[str],
    dtype: str,
    rows_per_chunk: int,
    n_chunks: int,
) -> None:
    """The root attributes of a new store file (not complete yet)."""
    f.attrs["format"] = schema.FORMAT
    f.attrs["format_version"] = schema.FORMAT_VERSION
    f.attrs["featpipe_version"] = __version__
    f.attrs["created"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    f.attrs["versions"] = encode_attr(versions())
    for name, value in attrs.items():
        f.attrs[name] = encode_attr(value)
    f.attrs["layers"] = encode_attr(list(layers))
    f.attrs["dtype"] = dtype
    f.attrs["rows_per_chunk"] = int(rows_per_chunk)
    f.attrs["n_chunks"] = int(n_chunks)
    f.attrs["complete"] = False


def write_samples(
    f: h5py.File, ids: Sequence[str], labels: np.ndarray, splits: np.ndarray, classes: Sequence[str]
) -> None:
    """samples/id, samples/label, samples/split and classes of a new store file."""
    text = h5py.string_dtype()
    f.create_dataset(schema.SAMPLES_ID, data=list(ids), dtype=text)
    create_checked(f, schema.SAMPLES_LABEL, np.asarray(labels, dtype=np.int64))
    split_ds = create_checked(f, schema.SAMPLES_SPLIT, np.asarray(splits, dtype=np.uint8))
    split_ds.attrs["names"] = list(SPLIT_NAMES)
    f.create_dataset(schema.CLASSES, data=list(classes), dtype=text)


# The output file's parameter, named as each caller sets it: featpipe.cli.as_flags shows the
# flag alone (export, consolidate).
OUT = "out (CLI: --out)"


def check_out_file(
    path: str | Path,
    *,
    option: str,
    replace: bool = True,
    example: str = "features.h5",
    inputs: Sequence[tuple[str, str | Path]] = (),
) -> Path:
    """Refuse (ConfigError), before anything is written, an output path that cannot become a
    file: a folder, a path below a file, or one of ``inputs``, the (what, path) files the
    command reads (writing there would replace one). Unless ``replace``, an existing file is
    refused too. ``option`` names the setting the path came from (``--out``) in the messages,
    and ``example`` a file name to suggest instead."""
    # Path() drops a trailing slash: "dir/" would become a file named dir.
    if isinstance(path, str) and path.endswith((os.sep, os.altsep or os.sep)):
        raise ConfigError(
            f"{option} {path} ends with a slash, so it names a folder; it must name a file, "
            f"e.g. {Path(path) / example}."
        )
    path = Path(path)
    if path.is_dir():
        raise ConfigError(
            f"{option} {path} is a folder; it must name a file, e.g. {path / example}."
        )
    blocking = file_in_the_way(path.parent)
    if blocking is not None:
        raise ConfigError(
            f"Cannot write {path}: {blocking} is a file, not a folder. Choose another {option}."
        )
    for what, source in inputs:
        if is_input(path, source):
            raise ConfigError(
                f"{option} {path} is the {what} this command reads: writing there would replace "
                f"it. Give another file, e.g. {option} {path.with_name(example)}."
            )
    if not replace and path.exists():
        raise ConfigError(f"{path} exists; pass --force (force=True) to replace it.")
    return path


def is_input(out: str | Path, path: str | Path) -> bool:
    """Whether the file ``out`` is the file ``path``, under any name (a link, another case on
    a case-insensitive disk): writing ``out`` would replace it."""
    out, path = Path(out), Path(path)
    return out.is_file() and path.exists() and out.samefile(path)


def file_in_the_way(folder: Path) -> Path | None:
    """The file at ``folder`` or at its nearest existing parent, which keeps ``folder`` from
    being a folder; None when that is a folder."""
    for at in [folder, *folder.parents]:
        if at.exists():
            return None if at.is_dir() else at
    return None


def check_not_source(out: Path, store: Path, *, reader: str = "it", fix: str = "") -> None:
    """Refuse (ConfigError) an ``out`` that is the store file read from, or inside its parts
    folder: with --force, writing it would replace what is being read. ``reader`` names who
    reads the store in the message, ``fix`` adds to its way out (e.g. ", e.g. x.npz")."""
    parts = parts_dir(store)
    if is_input(out, store) or Path(out).resolve().is_relative_to(parts.resolve()):
        raise ConfigError(
            f"--out {out} is the store itself or inside its parts folder ({parts}), which "
            f"{reader} reads from. Write it to another path{fix}."
        )


def create_new(tmp: Path, busy: StoreInUseError) -> h5py.File:
    """The new HDF5 file ``tmp``, or ``busy`` raised when another process is writing it (HDF5
    locks it while open). A ``tmp`` already there is a killed run's leftover, deleted, unless
    another process holds it (mode "w" would truncate a file before HDF5 finds its lock)."""
    try:
        claimed(tmp, tmp.unlink)
        return h5py.File(tmp, "x")
    except FileExistsError as exc:  # another process made it since
        raise busy from exc
    except OSError as exc:
        if lock_conflict(exc):
            raise busy from exc
        with contextlib.suppress(OSError):  # what a failed create left
            claimed(tmp, tmp.unlink)
        raise


def creating_elsewhere(path: Path, tmp: Path) -> StoreInUseError:
    """The error for a store ``path`` whose temporary file ``tmp`` another process writes."""
    return StoreInUseError(
        f"Another process is creating a store at {path} now ({tmp.name} is open for writing "
        "there). Wait for it to finish, or write to another path."
    )


def file_id(f: h5py.File) -> tuple[int, int]:
    """The (device, inode) of the open file ``f``: which file a temporary name should still
    name when it is renamed or deleted (another writer of the same path may have replaced it)."""
    return _id(os.fstat(f.id.get_vfd_handle()))


def replace_store_file(
    tmp: Path, path: Path, made: tuple[int, int], busy: StoreInUseError, *, drop_parts: bool = True
) -> None:
    """Move the finished store file ``tmp`` (``made``: its :func:`file_id`) to ``path``, or
    raise ``busy`` when ``tmp`` is no longer that file: another writer of ``path`` took the
    name over, and what is there now is its half-made file. A parted store replaced there
    takes its parts folder with it (unless not ``drop_parts``): those part files belong to no
    store any more, and the cache would count them into the new one. The caller then calls
    :func:`~featpipe.atomic.sync_placed` (with StoreWriteError), outside the block that
    deletes ``tmp`` on failure."""
    parted = parted_at(path) and drop_parts

    def check(fd: int) -> None:
        if _id(os.fstat(fd)) != made:
            raise busy
        os.fsync(fd)  # its bytes on disk before its name: else zeros may stand for them

    try:
        if not claimed(tmp, lambda: os.replace(tmp, path), check):
            raise busy
    except BlockingIOError as exc:  # another writer has it open: the name is its file now
        raise busy from exc
    if parted:
        shutil.rmtree(parts_dir(path), ignore_errors=True)


def discard(tmp: Path, made: tuple[int, int] | None) -> None:
    """Delete ``tmp`` after a failed write, if it is still the file this process made
    (``made``: its :func:`file_id`; None when it made none): else it is another writer's."""
    # No lock taken: this process may hold the file still (HDF5 keeps a file whose close
    # failed open), and a writer that took the name over has another file there.
    with contextlib.suppress(OSError):
        if made is not None and _id(os.stat(tmp)) == made:
            tmp.unlink()


def _id(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def check_samples(ids: Sequence[str], labels: Any, classes: Sequence[str]) -> np.ndarray:
    """The labels as int64 class indices, after refusing what a store cannot hold (labels
    that name no class, names that are not UTF-8): called before any file is replaced."""
    labels = _checked_labels(labels, classes)
    _check_text(ids, classes)
    return labels


def _check_text(ids: Sequence[str], classes: Sequence[str]) -> None:
    """HDF5 keeps ids and class names as UTF-8: a file name in another encoding (read by
    Python as surrogate escapes) cannot be stored, and is named here rather than in h5py."""
    for what, names in (("sample id", ids), ("class name", classes)):
        for name in names:
            try:
                name.encode()
            except UnicodeEncodeError:
                raise SourceError(
                    f"The {what} {name.encode(errors='surrogateescape')!r} is not valid UTF-8 "
                    "(a file or folder name written in another encoding, e.g. Latin-1), and a "
                    "store keeps names as UTF-8. Rename such files to UTF-8, e.g. `convmv -f "
                    "latin1 -t utf8 -r --notest DATA_DIR`."
                ) from None


def _checked_labels(labels: Any, classes: Sequence[str]) -> np.ndarray:
    """Labels as int64 indices into ``classes``; anything else is refused (a store has no
    "no label" value: -1 would read as the last class)."""
    raw = np.asarray(labels).ravel()
    if raw.dtype.kind not in "iu":
        if raw.dtype.kind in "fb":
            with np.errstate(invalid="ignore"):  # NaN: reported below
                wrong = np.flatnonzero(raw.astype(np.int64) != raw)
        else:  # text, objects
            wrong = np.arange(raw.size)
        if len(wrong):
            raise ConfigError(
                f"Labels must be integer class indices; got {raw[wrong[0]]} at row "
                f"{wrong[0]} ({len(wrong)} such rows). Give each row the index of its class."
            )
    raw = raw.astype(np.int64)
    wrong = np.flatnonzero((raw < 0) | (raw >= len(classes)))
    if len(wrong):
        shown = listed((f"{raw[i]} at row {i}" for i in wrong), total=len(wrong))
        names = listed(map(repr, classes), 5, total=len(classes))
        raise ConfigError(
            f"Labels must be in [0, {len(classes)}) (indices into the {len(classes)} classes "
            f"{names}); got {shown}. Fix those labels, or add the classes they stand "
            'for (a store has no value for "no label": leave unlabelled rows out).'
        )
    return raw


def _check_attrs(attrs: Mapping[str, Any]) -> None:
    """Refuse a root attribute that readers take as a JSON object (``source``, ``backbone``,
    ...) but is not a mapping: a plain string there made a store that read as damaged."""
    for name, value in attrs.items():
        if name in schema.JSON_ATTRS and name != "layers" and not isinstance(value, Mapping):
            raise ConfigError(
                f"The store attribute {name!r} must be a dict (featpipe reads it as one); got "
                f"{value!r}. Give a dict (e.g. {{'name': {value!r}}}), or another attribute "
                "name."
            )


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="seconds")


def write_failed(path: Path, action: str, exc: BaseException, done: str, fix: str):
    """One sentence for a failed write: the file, the reason, what is safe, how to go on."""
    error = StoreWriteError(f"Cannot {action} {path}: {describe_failure(exc)}. {done}; {fix}.")
    error.errno = os_error_number(exc)
    return error


RESUME_FIX = "free some space (or fix the disk), then run the same command to resume"


UNCHANGED = "Nothing was written there, and the store is unchanged"  # a failed copy or export


def copy_failed(out: Path, exc: BaseException) -> StoreWriteError:
    """The error for a file made from a store (consolidated, exported) that the disk refused."""
    return write_failed(
        out,
        "write",
        exc,
        UNCHANGED,
        f"free some space, or choose another {OUT}, then run the same command again",
    )


class StoreWriter:
    """Writes one store file: :meth:`create` lays it out, :meth:`open` resumes it;
    :meth:`write_chunk` fills a chunk, :meth:`commit` sets the done flags of the chunks
    filled (after one fsync of their rows); :meth:`finish` sets
    ``complete`` once every chunk is done. Use it as a context manager.

    Each open starts a *run*: the chunks it writes record its start time and their seconds
    (``progress/chunk_run``, ``progress/chunk_seconds``), so the cost of a store built by
    several runs (interrupted, killed, resumed) is their sum (:meth:`cost`)."""

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
        self.run_started = time.time()
        self._clock = time.perf_counter()  # when this run last wrote a chunk (or started)
        self._unflagged: list[int] = []  # chunks written, their done flags not set yet
        self._committed = self._clock  # when flags were last set

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
        half-made layout. Refuses (StoreWriteError) when its disk cannot hold the store."""
        path = Path(path)
        dtype = _check_dtype(dtype)
        n = len(ids)
        splits = np.asarray(splits, dtype=np.uint8)
        if not (len(labels) == len(splits) == n) or n == 0:
            raise ConfigError(
                f"A store needs ids, labels and splits of one non-zero length; got "
                f"{n}, {len(labels)}, {len(splits)}."
            )
        labels = check_samples(ids, labels, classes)
        rows_per_chunk = _check_rows_per_chunk(rows_per_chunk)
        bad = [name for name in layers if "/" in name or not name]
        if bad:
            raise ConfigError(f"Layer names must be non-empty and contain no '/'; got {bad}.")
        _check_attrs(attrs)
        path.parent.mkdir(parents=True, exist_ok=True)
        n_chunks = n_chunks_for(n, rows_per_chunk)
        row_bytes = sum(int(dim) for dim, _ in layers.values()) * np.dtype(dtype).itemsize
        check_free_space(path, n_chunks * min(rows_per_chunk, n) * row_bytes, "the store")
        tmp = path.with_name(path.name + ".tmp")
        busy = creating_elsewhere(path, tmp)
        made = None
        try:
            with create_new(tmp, busy) as f:
                made = file_id(f)
                write_root(f, attrs, list(layers), dtype, rows_per_chunk, n_chunks)
                write_samples(f, ids, labels, splits, classes)
                create_checked(f, schema.SAMPLES_OK, np.zeros(n, dtype=bool), rows_per_chunk)
                _create_reasons(f, n)
                group = f.create_group(schema.FEATURES)
                for name, (dim, pooling) in layers.items():
                    ds = _create_features(group, name, n, int(dim), rows_per_chunk, dtype)
                    ds.attrs.update(layer=name, pooling=pooling, dim=int(dim), dtype=dtype)
                create_checked(f, schema.CHUNK_DONE, np.zeros(n_chunks, dtype=bool))
                _create_run_records(f, n_chunks)
            replace_store_file(tmp, path, made, busy)
        except StoreInUseError:
            raise  # the tmp file is the other process's
        except StoreWriteError:
            discard(tmp, made)
            raise  # it says what failed already
        except (OSError, RuntimeError) as exc:
            discard(tmp, made)
            raise write_failed(path, "create", exc, "Nothing was written", RESUME_FIX) from exc
        except BaseException:
            discard(tmp, made)
            raise
        sync_placed(path, StoreWriteError)
        return cls.open(path)

    @classmethod
    def open(cls, path: str | Path) -> StoreWriter:
        """Open an existing store for resuming; refuses (StoreWriteError) when its disk cannot
        hold the chunks still to write."""
        path = Path(path)
        # No chunk cache: every chunk goes to the file inside write_chunk, so a failed write
        # (a full disk) raises there, and nothing dirty is left for a later flush or close to
        # fail on. With HDF5's cache the error surfaced in a destructor, a chunk's flag could
        # reach the file without its rows, and the next flush crashed the process.
        file = open_h5(path, "r+", rdcc_nbytes=0)
        try:
            if file.attrs.get("format") != schema.FORMAT:
                raise unreadable(path, "it is an HDF5 file but not a featpipe store")
            writer = cls(file)
            writer._check_space()
            if schema.CHUNK_RUN not in file:  # a store from before per-chunk costs
                _create_run_records(file, writer.n_chunks)
        except BaseException:
            file.close()
            raise
        return writer

    def _check_space(self) -> None:
        pending = self.pending_chunks()
        row_bytes = sum(self._file[schema.FEATURES][n].shape[1] for n in self.layers)
        chunk_bytes = min(self.rows_per_chunk, self.n_rows) * row_bytes
        needed = len(pending) * chunk_bytes * np.dtype(self.dtype).itemsize
        # Where the file system keeps the store sparse, its holes are what is left to write.
        needed = min(needed, unwritten_bytes(self.path))
        check_free_space(self.path, needed, f"writing its {len(pending)} unfinished chunks")

    # -- writing -------------------------------------------------------------------------------
    def chunk_done(self) -> np.ndarray:
        self.commit()
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
        seconds: float | None = None,
        peaks: Mapping[str, np.ndarray] | None = None,
        skip_non_finite: bool = False,
    ) -> int:
        """Write every layer's rows of chunk ``index`` (and their ok flags); its done flag is
        set by the next :meth:`commit`, after an fsync of its rows.
        ``errors`` maps positions in the chunk to why that image was skipped: those rows are
        written as zeros and marked not ok. ``seconds`` is what the chunk cost (default: the
        time since this run's previous chunk, or since it started). Features that are not
        finite in the store's dtype raise NonFiniteFeaturesError, unless ``skip_non_finite``
        and the model gave them (NaN, inf): those rows are skipped too, with their reason. A
        float16 overflow always raises; ``peaks`` (``{layer: each row's largest |value|}``
        before a cast to float16 made elsewhere, e.g. on the device) lets its message name
        the largest value. A failed write leaves the flag clear and raises StoreWriteError.
        Returns the number of bytes of features written."""
        start, stop = self.chunk_rows(index)
        errors = dict(errors or {})
        blocks, ok = self._checked_blocks(index, features, errors, peaks or {}, skip_non_finite)
        now = time.perf_counter()
        seconds = now - self._clock if seconds is None else float(seconds)
        done = self._file[schema.CHUNK_DONE]
        try:
            if done[index]:  # rewriting a finished chunk: it is not finished while we do
                done[index] = False
                self._file.flush()
            for name, block in blocks.items():
                self._file[schema.FEATURES][name][start:stop] = block
            self._write_ok(start, ok, errors)
            self._file[schema.CHUNK_SECONDS][index] = seconds
            self._file[schema.CHUNK_RUN][index] = self.run_started
            self._file.flush()  # a failed write (a full disk) raises here, for this chunk
            if index not in self._unflagged:
                self._unflagged.append(index)
            if now - self._committed >= COMMIT_SECONDS:
                self.commit()
        except StoreMismatchError:
            raise
        except Exception as exc:
            raise self._chunk_failed(index, exc) from exc
        self._clock = now
        return sum(block.nbytes for block in blocks.values())

    def commit(self) -> None:
        """Set the done flags of the chunks written since the last commit, after one fsync of
        their rows: a flag on disk always means its rows are there (a power cut may reorder
        writes). write_chunk commits at most every COMMIT_SECONDS, since an fsync costs 5-12
        ms whatever the chunk's size; reading the flags, finish and close commit first."""
        if not self._unflagged:
            return
        sync_h5(self._file)
        done = self._file[schema.CHUNK_DONE]
        for index in self._unflagged:
            done[index] = True
        self._file.flush()
        self._unflagged = []
        self._committed = time.perf_counter()

    def _checked_blocks(
        self,
        index: int,
        features: Mapping[str, np.ndarray],
        errors: dict[int, str],
        peaks: Mapping[str, np.ndarray],
        skip_non_finite: bool,
    ) -> tuple[dict, np.ndarray]:
        """Each layer's rows of the chunk in the store's dtype, skipped rows (``errors``) as
        zeros, checked before any is written, and the rows' ok flags. Rows the model gave
        non-finite features are added to ``errors`` when ``skip_non_finite``; otherwise they
        raise."""
        start, stop = self.chunk_rows(index)
        missing = set(self.layers) - set(features)
        if missing:
            raise ConfigError(f"Chunk {index} lacks features for layers {sorted(missing)}.")
        ok = np.ones(stop - start, dtype=bool)
        ok[list(errors)] = False
        blocks, found = {}, {}
        for name in self.layers:
            ds = self._file[schema.FEATURES][name]
            with np.errstate(over="ignore"):  # an overflow is reported just below
                block = np.asarray(features[name], dtype=ds.dtype)
            if block.shape != (stop - start, ds.shape[1]):
                raise ConfigError(
                    f"Chunk {index} of layer {name!r} must have shape "
                    f"{(stop - start, ds.shape[1])}; got {block.shape}."
                )
            if not ok.all():
                block = np.where(ok[:, None], block, 0).astype(ds.dtype)
            if not all_finite(block):  # rare: the cost of what follows is no concern
                error, rows = self._not_finite(name, block, start, features[name], peaks.get(name))
                if error is not None or not skip_non_finite:
                    raise error or self._from_model(name, block, start)
                for pos in rows:
                    found.setdefault(int(pos), self._reason(name, block[pos]))
            blocks[name] = block
        if found:  # a row not finite in one layer is skipped in every layer
            errors.update(found)
            ok[list(found)] = False
            blocks = {n: np.where(ok[:, None], b, 0).astype(b.dtype) for n, b in blocks.items()}
        return blocks, ok

    @staticmethod
    def _reason(name: str, row: np.ndarray) -> str:
        kind = "NaN" if np.isnan(row).any() else "inf"
        return f"{schema.NOT_FINITE} ({kind} in layer {name!r})"

    def _where(self, name: str, block: np.ndarray, start: int) -> str:
        """``Layer 'x' has N values that are not finite ... (rows, images)``."""
        bad = ~np.isfinite(block)
        rows = np.flatnonzero(bad.any(axis=1)) + start
        ids = self._file[schema.SAMPLES_ID].asstr()[rows[:IDS_SHOWN]]
        return (
            f"Layer {name!r} has {int(bad.sum())} values that are not finite as {self.dtype} "
            f"(rows {rows[0]} to {rows[-1]} of {self.path}, images {named_rows(ids, len(rows))})"
            "; nothing of their chunk was written"
        )

    def _not_finite(
        self, name: str, block: np.ndarray, start: int, given: Any, peaks: np.ndarray | None
    ) -> tuple[NonFiniteFeaturesError | None, np.ndarray]:
        """For a chunk's ``block`` of layer ``name`` holding values that are not finite
        (``given``: before the cast to the store's dtype; ``peaks``: each row's largest
        |value| before a cast made elsewhere): the error for a float16 overflow, or None
        when the model gave them, with the positions of the rows not finite."""
        rows = np.flatnonzero(~np.isfinite(block).all(axis=1))
        if self.dtype != "float16":
            return None, rows
        given = np.asarray(given)
        if given.dtype.itemsize > 2:  # cast here: the values before it are known
            peaks = np.abs(given[rows]).max(axis=1)
        elif peaks is not None:
            peaks = np.asarray(peaks)[rows]
        if peaks is None:  # cast to float16 elsewhere, size unknown: inf is taken as overflow
            overflow = ~np.isnan(block[rows]).any(axis=1)
            reach = ""
        else:
            overflow = np.isfinite(peaks)
            reach = f" (|values| up to {float(peaks[overflow].max()):g})" if overflow.any() else ""
        if not overflow.any():
            return None, rows
        return NonFiniteFeaturesError(
            f"{self._where(name, block, start)}. float16 holds magnitudes up to 65504 and this "
            f"layer's activations go beyond it{reach}, so they became inf. Store the features "
            'as float32 (dtype="float32").'
        ), rows

    def _from_model(self, name: str, block: np.ndarray, start: int) -> NonFiniteFeaturesError:
        """The error for NaN or inf that the model gave (not a float16 overflow)."""
        kind = "NaN" if np.isnan(block).any() else "inf"
        return NonFiniteFeaturesError(
            f"{self._where(name, block, start)}. The backbone produced {kind}: check its "
            'weights and the images (an extraction with on_error="skip" records such images '
            "as skipped and goes on)."
        )

    def _chunk_failed(self, index: int, exc: BaseException) -> StoreWriteError:
        """Clear the chunk's flag (best effort: it was set last, so it is most likely clear
        already) and say how much of the store is safe."""
        if index in self._unflagged:
            self._unflagged.remove(index)
        with contextlib.suppress(Exception):
            self._file[schema.CHUNK_DONE][index] = False
            self._file.flush()
        try:
            safe = f"{int(self.chunk_done().sum())} of {self.n_chunks} chunks are written and safe"
        except Exception:
            safe = "the chunks marked done are written and safe"
        return write_failed(self.path, "write", exc, safe, RESUME_FIX)

    def cost(self) -> dict:
        """What building the store cost so far, summed over every run that wrote a finished
        chunk: ``images``, ``seconds``, ``images_per_s`` and ``runs``, one
        ``{"started", "images", "seconds", "chunks"}`` per run in order (``started`` is None
        for chunks written before featpipe recorded runs)."""
        done = self.chunk_done()
        started = self._file[schema.CHUNK_RUN][:]
        seconds = self._file[schema.CHUNK_SECONDS][:]
        runs: dict[float, dict] = {}
        for index in np.flatnonzero(done):
            start, stop = self.chunk_rows(int(index))
            run = runs.setdefault(float(started[index]), {"images": 0, "seconds": 0.0, "chunks": 0})
            run["images"] += stop - start
            run["seconds"] += float(seconds[index])
            run["chunks"] += 1
        records = [
            {
                "started": _iso(key) if key > 0 else None,
                "images": run["images"],
                "seconds": round(run["seconds"], 3),
                "chunks": run["chunks"],
            }
            for key, run in sorted(runs.items())
        ]
        images = sum(r["images"] for r in records)
        total = sum(r["seconds"] for r in records)
        return {
            "images": images,
            "seconds": round(total, 3),
            "images_per_s": round(images / total, 1) if total > 0 else 0.0,
            "runs": records,
        }

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
        """Mark the store complete (only when every chunk is done), then flush.
        ``extraction`` (about the finishing run: device, data path...) is stored with the
        summed :meth:`cost` of every run as the ``extraction`` attribute."""
        pending = self.pending_chunks()
        if pending:
            raise ConfigError(
                f"Cannot mark {self.path} complete: {len(pending)} of {self.n_chunks} chunks "
                "are not written."
            )
        check_free_space(self.path, 0, "marking it complete")
        try:
            sync_h5(self._file)  # every done flag on disk before "complete" can be
            if extraction is not None:
                value = {**dict(extraction), **self.cost()}
                self._file.attrs["extraction"] = encode_attr(value)
            self._file.attrs["complete"] = True
            self._file.flush()
        except (OSError, RuntimeError) as exc:
            done = f"All {self.n_chunks} chunks are written"
            raise write_failed(self.path, "mark complete", exc, done, RESUME_FIX) from exc

    def close(self) -> None:
        """Commit the chunks written (an interrupted run keeps them), then close."""
        if self._file.id.valid:
            try:
                self.commit()
            finally:
                self._file.close()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        # Already failing (the first error is the one to report): close as well as we can.
        with contextlib.suppress(Exception):
            self.close()


def write_arrays(
    path: str | Path,
    features: Mapping[str, np.ndarray],
    labels: Sequence[int] | np.ndarray,
    splits: Sequence[str | int] | np.ndarray,
    classes: Sequence[str],
    ids: Sequence[str] | None = None,
    attrs: Mapping[str, Any] | None = None,
    dtype: str = "float32",
    rows_per_chunk: int | None = None,
) -> FeatureStore:
    """Write a complete store from in-memory arrays (tests, examples) and open it.
    ``splits`` may be names ("train") or uint8 codes; ``attrs`` adds root attributes
    (a ``key`` among them names the store; otherwise one is hashed from the arrays and ids).
    ``ids`` default to the row numbers, zero-padded so that the rows are in id order.
    ``rows_per_chunk`` sets the store's chunks, HDF5's too (``schema``); None: min(n, 4096)."""
    features = {name: np.asarray(x) for name, x in features.items()}
    if not features:
        raise ConfigError("write_arrays needs at least one layer of features.")
    n = len(labels)
    for name, x in features.items():
        if x.ndim != 2 or len(x) != n:
            raise ConfigError(
                f"Features of layer {name!r} must be (n, D) with n={n} rows; got {x.shape}."
            )
    codes = _split_codes(splits, n)
    ids = default_ids(n) if ids is None else [str(i) for i in ids]
    attrs = dict(attrs or {})
    attrs.setdefault("key", _hash_arrays(features, labels, codes, ids))
    layers = {
        name: (x.shape[1], name.partition(":")[2] or "unknown") for name, x in features.items()
    }
    rows = max(1, min(n, 4096)) if rows_per_chunk is None else rows_per_chunk
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
    return FeatureStore(path)


def _split_codes(splits: Sequence[str | int] | np.ndarray, n: int) -> np.ndarray:
    values = list(splits)
    if len(values) != n:
        raise ConfigError(f"splits must have one entry per row ({n}); got {len(values)}.")
    codes = []
    for v in values:
        if isinstance(v, str):
            codes.append(split_code(v))
        elif int(v) in SPLIT_CODES.values():
            codes.append(int(v))
        else:
            raise ConfigError(f"Unknown split code {v!r}; valid codes: {dict(SPLIT_CODES)}.")
    return np.asarray(codes, dtype=np.uint8)


def default_ids(n: int) -> list[str]:
    """Ids for ``n`` rows that sort as their numbers ("07" before "10"): stores keep their
    rows in id order for reading by id, and "10" sorts before "2", so ``str(i)`` would leave
    every store of more than 10 rows out of id order (streamed heads read it many times)."""
    width = len(str(max(n - 1, 0)))
    return [f"{i:0{width}d}" for i in range(n)]


def _hash_arrays(
    features: Mapping[str, np.ndarray], labels: Any, codes: np.ndarray, ids: Sequence[str]
) -> str:
    """The key of a store written from arrays. The ids are part of it: heads take their rows,
    and draw their folds, in id order, so the same arrays under other ids may fit other
    heads, whose results must not be taken for these."""
    h = hashlib.sha256()
    for name in sorted(features):
        h.update(name.encode())
        h.update(np.ascontiguousarray(features[name]).tobytes())
    h.update(np.asarray(labels, dtype=np.int64).tobytes())
    h.update(codes.tobytes())
    for text in ids:  # each id ended by a NUL: ["ab", "c"] and ["a", "bc"] differ
        h.update(text.encode() + b"\0")
    return h.hexdigest()[:16]
