"""The on-disk layout of a feature store (HDF5, format version 2).

One ``.h5`` file holds the pooled features of one or more layers of one backbone over one image
set, plus everything needed to tell where they came from. Plain ``h5py`` reads all of it::

    /                       attrs: format="featpipe.store", format_version=2, featpipe_version,
                                   created (ISO 8601), key (16 hex chars, see store_key),
                                   backbone (JSON: spec, weights_sha256, preprocessing),
                                   weights_sha256, preprocessing (JSON), source_fingerprint,
                                   source (JSON description of the image source),
                                   layers (JSON list of layer names), dtype, versions (JSON:
                                   python, torch, torchvision, h5py, numpy),
                                   compute (JSON: precision "fp32", "bf16" or "fp16",
                                   decode "pil" or "nvjpeg"; part of the key),
                                   rows_per_chunk, n_chunks, complete (bool),
                                   extraction (JSON: the cost of building the store, summed
                                   over every run that wrote chunks: images, seconds,
                                   images_per_s, runs [{started, images, seconds, chunks}];
                                   and the device, data_path, workers, lanes of the run
                                   that completed it; lanes 0: loader workers decoded)
    /samples/id             (N,)  utf-8 strings, stable sample ids
    /samples/label          (N,)  int64, index into /classes
    /samples/split          (N,)  uint8 codes; attrs: names=["train","val","test"]
    /samples/ok             (N,)  bool: the image was read and its features are written
    /samples/error          (N,)  utf-8 strings: why an image was skipped ("" otherwise)
    /classes                (C,)  utf-8 class names
    /features/<layer>       (N, D) float16 or float32, chunked (min(rows_per_chunk, N), D),
                                   with a fletcher32 checksum per chunk (stores made before it
                                   have none); attrs: layer, pooling, dim, dtype
    /progress/chunk_done    (n_chunks,) bool
    /progress/chunk_seconds (n_chunks,) float64: seconds the run that wrote the chunk spent
                                   on it
    /progress/chunk_run     (n_chunks,) float64: start time (Unix seconds) of that run

``samples/label``, ``samples/split``, ``samples/ok`` and ``progress/chunk_done`` carry a
fletcher32 checksum per chunk too (``ok`` in chunks of ``rows_per_chunk`` rows, ``chunk_done``
of 1,024 flags; stores made before them have none), so a flipped bit in a label, a split, an ok
or a done flag is an error on read, not a wrong number. The text datasets (ids, class names,
reasons: HDF5 keeps variable-length text outside the chunks) and the cost records
(``chunk_seconds``, ``chunk_run``: read only to sum a store's cost) have none.

Rows are cut into chunks of ``rows_per_chunk`` rows (the last one may be shorter); chunk ``i``
holds rows ``[i * rows_per_chunk, min(N, (i + 1) * rows_per_chunk))``. Every array is allocated
at full size when the file is created (chunks allocated early, so later writes touch only raw
data, never HDF5 metadata; HDF5 writes checksummed chunks at once, as zeros, so the file takes
its full size on disk from the start). HDF5 checks a chunk's checksum on every read, plain
h5py's too: a chunk whose bytes changed on disk is an error, never a wrong number. A writer
writes a chunk's rows for every layer and flushes, then sets its ``chunk_done`` flag (with
its ``chunk_seconds`` and ``chunk_run``) and flushes again, with HDF5's chunk cache off: a
flag on disk always means its rows are there, and a failed write (a full disk) leaves the flag
clear. ``complete`` is set only after every flag is set.
Resuming writes only the chunks not marked done, so it is idempotent, and a killed run loses at
most the chunks in flight. Rows of chunks not done hold unspecified values: read
``chunk_done`` first. Chunk bookkeeping does not depend on who writes a chunk, so several
writers (ranks) can each fill a disjoint range of chunks.

``compute`` says how the features were computed beyond the model's inputs: ``precision`` of the
forward pass (fp32 on CPU; bf16 autocast on CUDA, fp16 on GPUs without native bf16) and
``decode``, where the pixels come from (``pil``: Pillow, or torchvision's CPU decoder, which
gives the same pixels; ``nvjpeg``: decoded and resized on a CUDA device). They move features by
percent, so they are part of the key and a store is never resumed or reused across them. Later
entries (e.g. a faster, inexact decode) are left out of ``compute`` at their exact default, so
that existing keys stay valid.

Skipped rows (``on_error="skip"``): an image that cannot be read, or whose features the model
gave as NaN or infinite (in any layer), keeps its row, with ``samples/ok`` False, the reason in
``samples/error`` (e.g. "truncated file", "its features are not finite (NaN in layer
'logits')") and zeros as features in every layer. A float16 overflow is never skipped (the
fix is a float32 store, not another image). ``ok`` and ``error`` are written with the chunk's
features, before its ``chunk_done`` flag, so a done chunk's rows are final, skips included (a
reason is the one write that touches HDF5 metadata, its global heap, and only skipped rows have
one). Readers leave skipped rows out of everything they return (features, labels, ids, split
counts); a row's ``ok`` flag means nothing until its chunk is done. Format version 1 has
neither dataset: every row of a version-1 store is ok.

Layer names are ``LayerSpec.name`` strings (``pooled``, ``blocks.5:avg``, ``layer3:grid:2``)
used directly as dataset names. A file is created under a temporary name and renamed into place
once its layout is written, so a file at a store's path always has the full layout.

Beside a store, ``<store>.lock`` is the lock that one writing process holds from creating or
resuming the store to finishing it, and ``<store>.lock.json`` names the holder (pid, host,
since) while it is held. featpipe's readers hold a shared lock of ``<store>.read.lock`` while
they may read a store that has its ``.lock`` (one extracted there; the last reader deletes the
file), and ``featpipe cache prune`` skips a store so held; they never wait for it, and plain
h5py takes none. A store deleted or moved while it is read anyway is an error at its next
read, and a parted store's reader checks after each read that the part files it read are
still there (HDF5 reads a missing part as zeros).

A store filled by several processes (torchrun ranks, ``--shard`` job-array tasks) has the
**parted layout**, in the same format: its root has the attribute ``layout="parts"``,
``n_rows`` and ``part_chunks`` (int64: the first chunk of every part, then ``n_chunks``). Parts
are contiguous runs of whole chunks fixed from ``n_chunks`` alone (at least 4 chunks each, at
most 1,000 parts; boundaries move to the nearest input-shard start when a source has shards),
never from the number of processes, so that a rerun with any number of processes continues it.
Part ``k`` is ``<store>.parts/part-<k:05d>.h5``, a store file of this layout over its rows,
with the attributes ``parent_key``, ``part`` and ``first_row``; one process writes it at a time
(its own ``.lock``). The top-level ``<store>.h5`` holds ``samples/id``, ``samples/label``,
``samples/split``, ``classes`` and every root attribute; its ``features/<layer>``,
``samples/ok`` and ``progress/*`` are HDF5 virtual datasets over the parts, by paths relative
to the top-level file (HDF5 looks for them beside it, so the folder can be moved; a set
``HDF5_VDS_PREFIX`` would change that). ``samples/error`` is copied into it when the store is
completed. A virtual dataset reads its fill value where a source file is missing (zeros; False
for ``chunk_done`` and ``ok``), so featpipe's reader checks first that every part file exists
(and, once complete, belongs to the store) and otherwise raises one error naming the missing
parts. Plain h5py reads a parted store as it reads a one-file store, as long as the parts
folder is beside it; ``featpipe consolidate STORE --out FILE`` copies it into one
self-contained file (no virtual datasets, no ``layout`` attribute). Its ``extraction``
attribute sums the parts' costs (images, process-seconds) and lists ``parts``, ``filled_by``
(e.g. ``["rank 0/2", "rank 1/2"]`` or ``["shard 0/4", ...]``) and one run per writer.

Stores written before ``compute``, ``chunk_seconds`` and ``chunk_run`` existed have the same
format version and stay readable; their keys differ from today's, so they are not reused, and
resuming one (at ``--out``) is refused as made from other inputs.

Reading the pooled features of the train split with plain h5py::

    with h5py.File(path, "r") as f:
        assert f.attrs["complete"]
        train = (f["samples/split"][:] == 0) & f["samples/ok"][:]
        X = f["features/pooled"][:][train]
        y = f["samples/label"][:][train]
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

FORMAT = "featpipe.store"
FORMAT_VERSION = 2  # 2: samples/ok and samples/error (skipped images)
DTYPES = ("float16", "float32")

SAMPLES_ID = "samples/id"
SAMPLES_LABEL = "samples/label"
SAMPLES_SPLIT = "samples/split"
SAMPLES_OK = "samples/ok"
SAMPLES_ERROR = "samples/error"
CLASSES = "classes"
FEATURES = "features"
CHUNK_DONE = "progress/chunk_done"
CHUNK_SECONDS = "progress/chunk_seconds"
CHUNK_RUN = "progress/chunk_run"

# How the reason of a row skipped for NaN or infinite features starts; other skipped rows are
# images that could not be read.
NOT_FINITE = "its features are not finite"


def count_not_finite(reasons: Iterable[str]) -> int:
    """How many of the skipped rows' ``reasons`` are features that are not finite."""
    return sum(reason.startswith(NOT_FINITE) for reason in reasons)


def skipped_images(count: int, not_finite: int | None) -> str:
    """``count`` skipped rows in words, each reason counted: '2 unreadable images', '1 image
    with non-finite features', '3 images (1 unreadable, 2 with non-finite features)'.
    ``not_finite`` None: not known (only the first few reasons are)."""
    images = "image" if count == 1 else "images"
    if not_finite is None:
        return f"{count} {images} (unreadable or with non-finite features)"
    if not not_finite:
        return f"{count} unreadable {images}"
    if not_finite == count:
        return f"{count} {images} with non-finite features"
    unreadable = count - not_finite
    return f"{count} {images} ({unreadable} unreadable, {not_finite} with non-finite features)"


def skipped_rows(skipped: Mapping[str, str]) -> str:
    """:func:`skipped_images` of ``{id: reason}``, every reason known."""
    return skipped_images(len(skipped), count_not_finite(skipped.values()))


# Root attributes stored as JSON text (decoded by the reader).
JSON_ATTRS = ("backbone", "preprocessing", "source", "layers", "versions", "extraction", "compute")


def encode_attr(value: Any) -> Any:
    """A value HDF5 can store as an attribute: dicts and lists become JSON text."""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True)
    return value


def decode_attr(name: str, value: Any) -> Any:
    """One attribute as a plain Python value, JSON attributes decoded."""
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if name in JSON_ATTRS and isinstance(value, str):
        value = json.loads(value)
    return value


def decode_attrs(raw: Any) -> dict:
    """Root attributes as plain Python values, JSON attributes decoded."""
    return {name: decode_attr(name, value) for name, value in raw.items()}


def chunk_bounds(index: int, rows_per_chunk: int, n_rows: int) -> tuple[int, int]:
    """The row range ``[start, stop)`` of chunk ``index``."""
    start = index * rows_per_chunk
    return start, min(n_rows, start + rows_per_chunk)


def n_chunks_for(n_rows: int, rows_per_chunk: int) -> int:
    return -(-n_rows // rows_per_chunk)


def rows_done(chunk_done: np.ndarray, rows_per_chunk: int, n_rows: int) -> np.ndarray:
    """Per-row bool: whether the row's chunk is done."""
    return np.repeat(np.asarray(chunk_done, dtype=bool), rows_per_chunk)[:n_rows]
