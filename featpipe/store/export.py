"""A store's features for other tools: a parquet file (pandas, polars, duckdb, Spark) or npz.

Both hold, per row: the sample id, its split, the label index, the class name and the feature
vector (float32). Parquet keeps the vector in one fixed-size list column, ``features``, and the
store's provenance (key, backbone, layer, classes) in the file's metadata under ``featpipe``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from featpipe.atomic import replace_with
from featpipe.data.source import SPLIT_NAMES
from featpipe.errors import ConfigError, FileWriteError
from featpipe.extras import import_extra
from featpipe.store.files import disk_refused
from featpipe.store.reader import FeatureStore
from featpipe.store.writer import (
    OUT,
    UNCHANGED,
    check_not_source,
    check_out_file,
    copy_failed,
    write_failed,
)

FORMATS = ("npz", "parquet")


def export_features(
    store: FeatureStore,
    layer: str,
    out: str | Path,
    *,
    split: str | None = None,
    fmt: str | None = None,
    force: bool = False,
) -> Path:
    """Write one layer of ``store`` (one split, or all) to ``out`` as ``fmt`` (default: from
    the suffix, .npz or .parquet). An existing ``out`` is kept unless ``force``. Rows whose
    image was skipped are left out, as in every read of a store."""
    out = Path(out)
    fmt = fmt or out.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise ConfigError(
            f'Cannot tell the export format of {str(out)!r}: give fmt="npz" or "parquet" '
            "(CLI: --format npz or parquet), or an .npz or .parquet file name."
        )
    example = Path(store.path).with_suffix("." + fmt)
    check_not_source(out, store.path, reader="the export", fix=f", e.g. {example}")
    check_out_file(out, option=OUT, replace=force, example=f"features.{fmt}")
    store.layer_info(layer)  # an unknown layer fails before anything is written
    # In words for a command: the reader's own says "pass allow_incomplete=True".
    store.require_complete("export")
    out.parent.mkdir(parents=True, exist_ok=True)
    write = _write_parquet if fmt == "parquet" else _write_npz
    try:  # never a half-written (or, after a power cut, empty) file under the real name
        replace_with(out, lambda tmp: write(store, layer, split, tmp))
    except FileWriteError:  # the file is in place and the error says so
        raise
    except (OSError, RuntimeError) as exc:
        if disk_refused(exc):
            raise copy_failed(out, exc) from exc
        if isinstance(exc, OSError):  # reads fail as the store's errors: this is --out's folder
            raise write_failed(
                out, "write", exc, UNCHANGED, f"choose another {OUT}, in a folder you can write to"
            ) from exc
        raise
    return out


def _splits(split: str | None) -> tuple[str, ...]:
    return SPLIT_NAMES if split is None else (split,)


def _blocks(store: FeatureStore, layer: str, split: str | None) -> Iterator[dict]:
    """Column blocks (ids, split, label, class, features) of bounded size, split by split."""
    for name in _splits(split):
        ids = store.ids(name)
        start = 0
        for X, y in store.iter_chunks(layer, name, rows=store.rows_per_chunk * 8):
            yield {
                "id": ids[start : start + len(y)],
                "split": [name] * len(y),
                "label": y,
                "class": [store.classes[i] for i in y],
                "features": X,
            }
            start += len(y)


def _write_npz(store: FeatureStore, layer: str, split: str | None, path: Path) -> None:
    blocks = list(_blocks(store, layer, split))
    dim = store.layer_info(layer)["dim"]

    def joined(key: str, empty) -> np.ndarray:
        return np.concatenate([np.asarray(b[key]) for b in blocks]) if blocks else empty

    with open(path, "wb") as f:  # np.savez would add ".npz" to a name without it
        np.savez(
            f,
            ids=joined("id", np.array([], dtype=str)),
            splits=joined("split", np.array([], dtype=str)),
            labels=joined("label", np.array([], dtype=np.int64)),
            features=joined("features", np.empty((0, dim), np.float32)),
            classes=np.array(store.classes, dtype=str),
            layer=np.array(layer),
        )


def _write_parquet(store: FeatureStore, layer: str, split: str | None, path: Path) -> None:
    pa = import_extra("pyarrow", "parquet", "Exporting to parquet")
    import pyarrow.parquet as pq

    dim = store.layer_info(layer)["dim"]
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("split", pa.string()),
            ("label", pa.int64()),
            ("class", pa.string()),
            ("features", pa.list_(pa.float32(), dim)),
        ],
        metadata={"featpipe": json.dumps(_provenance(store, layer))},
    )
    with pq.ParquetWriter(path, schema) as writer:
        for block in _blocks(store, layer, split):
            flat = pa.array(np.ascontiguousarray(block["features"], np.float32).ravel())
            columns = {**block, "features": pa.FixedSizeListArray.from_arrays(flat, dim)}
            writer.write_table(pa.Table.from_pydict(columns, schema=schema))


def _provenance(store: FeatureStore, layer: str) -> dict:
    attrs = store.attrs
    return {
        "store": str(store.path),
        "store_key": store.key,
        "layer": layer,
        **store.layer_info(layer),
        "classes": store.classes,
        "backbone": store.attr_object("backbone").get("spec"),
        "weights_sha256": attrs.get("weights_sha256"),
        "preprocessing": attrs.get("preprocessing"),
    }
