"""The on-disk layout of a feature store (HDF5, format version 2).

One ``.h5`` file holds the pooled features of one or more layers of one backbone over one image
set, plus everything needed to tell where they came from. Plain ``h5py`` reads all of it::

    /                       attrs: format="featpipe.store", format_version=2, featpipe_version,
                                   created (ISO 8601), key (16 hex chars, see store_key),
                                   backbone (JSON: spec, weights_sha256, preprocessing),
                                   weights_sha256, preprocessing (JSON), source_fingerprint,
                                   source (JSON description of the image source),
                                   layers (JSON list of layer names), dtype, versions (JSON:
                                   python and each installed library featpipe uses: torch,
                                   torchvision, h5py, numpy, ...),
                                   compute (JSON: precision "fp32", "bf16", "fp16" or "fp64";
                                   decode "pil" or "nvjpeg"; part of the key),
                                   rows_per_chunk, n_chunks, complete (bool),
                                   extraction (JSON: the cost of building the store, summed
                                   over every run that wrote chunks: images, seconds,
                                   images_per_s, runs [{started, images, seconds, chunks}];
                                   and the device, data_path, workers, lanes, rows_per_chunk,
                                   on_error and skipped (rows) of the run that completed it;
                                   lanes 0: loader workers decoded)
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

The block above is the README's, word for word, and README.md's section "The feature store
(HDF5, format version 2)" is the one description of the rest: chunks and their checksums, how a
writer commits them (``chunk_done`` flags set in groups after one fsync, at most every
``writer.COMMIT_SECONDS``) and what a killed run loses, ``compute``, skipped rows, locks, the
parted layout and older stores. Said once, so that the two cannot drift apart;
tests/test_trust_docs_3.py checks the block against the README's and against a store that
featpipe writes.

Rows are cut into chunks of ``rows_per_chunk`` rows (the last one may be shorter); chunk ``i``
holds rows ``[i * rows_per_chunk, min(N, (i + 1) * rows_per_chunk))`` (:func:`chunk_bounds`).
Rows of chunks not done hold unspecified values: read ``chunk_done`` first.

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
