"""``featpipe export``: one layer of a store as parquet or npz, for other tools."""

from __future__ import annotations

import argparse
from pathlib import Path

from featpipe.cli.options import add_force_option, pick_layer

EXAMPLES = """\
examples:
  featpipe export data/cache/<store>.h5 --layer pooled --out features.parquet
  featpipe export store.h5 --layer pooled --split test --format npz --out test.npz

Parquet columns: id, split, label, class, features (a fixed-size list of float32), readable
by pandas, polars, duckdb and Spark; the store's provenance is in the file's metadata
(key "featpipe"). npz arrays: ids, splits, labels, features, classes, layer.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="write one layer of a store as parquet or npz",
        description="Write the features of one layer (and split) of a feature store, with "
        "sample ids, splits, labels and class names, as parquet or npz.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("store", metavar="STORE", help="feature store (.h5)")
    p.add_argument("--layer", help="feature layer (default: the store's only layer)")
    p.add_argument(
        "--split", choices=["train", "val", "test"], help="only this split (default: all)"
    )
    p.add_argument(
        "--format",
        dest="fmt",
        choices=["npz", "parquet"],
        help="file format (default: from the --out suffix); parquet needs pyarrow",
    )
    p.add_argument("--out", type=Path, required=True, metavar="FILE", help="file to write")
    add_force_option(p)
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from featpipe.store import FeatureStore
    from featpipe.store.export import export_features

    store = FeatureStore(args.store)
    layer = pick_layer(store, args.layer)
    path = export_features(store, layer, args.out, split=args.split, fmt=args.fmt, force=args.force)
    counts = store.split_counts()
    rows = counts[args.split] if args.split else sum(counts.values())
    dim = store.layer_info(layer)["dim"]
    print(f"wrote {rows} rows x {dim} features of layer {layer} to {path}")
    return 0
