"""``featpipe extract`` (features into a store) and ``featpipe info`` (what a store holds)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from featpipe.cli.options import (
    add_decode_option,
    add_force_option,
    add_image_size_option,
    add_limit_options,
    apply_limits,
)
from featpipe.data.unreadable import ON_ERROR
from featpipe.errors import ConfigError
from featpipe.store.files import format_bytes
from featpipe.store.schema import count_not_finite, skipped_images

EXTRACT_EPILOG = """\
examples:
  featpipe extract digits --image-size 64
  featpipe extract data/pets --val-fraction 0.1 --test-fraction 0.2 --seed 0 \\
      --backbone torchvision:resnet50@IMAGENET1K_V2 --layers layer3:avg avgpool
  featpipe extract manifest.csv --layers pooled blocks.5:avg blocks.3:grid:2 --dtype float32
  featpipe extract cifar10/ --limit-train 5000 --limit-test 1000 --image-size 128 --out c10.h5
  featpipe extract torchvision:CIFAR10@/data/torchvision --val-fraction 0.1 --image-size 96
  featpipe extract hf-dataset:/data/beans --layers pooled     # a save_to_disk folder
  featpipe extract 'wds:/data/shards-{000000..000099}.tar' --val-fraction 0.1  # quoted

The same inputs reuse the cached store without computing anything; an interrupted run
(Ctrl-C, SIGTERM, a kill, a full disk) resumes where it stopped when started again with the
same arguments. Two runs writing one store take turns: the second waits for the first (or
for --lock-timeout seconds) and then reuses its store. `featpipe cache list` shows the stores.

Many processes fill one store in parts (README "Scaling out"):
  torchrun --nproc-per-node 8 -m featpipe extract data/pets --out pets.h5
  featpipe extract data/pets --out pets.h5 --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT
Any later run, with any number of processes, continues a parted store.
"""

INFO_EPILOG = """\
examples:
  featpipe info data/cache/digits-efficientnet_lite0-0123456789abcdef.h5
  featpipe info store.h5 --json

info reads every stored feature once, to find values that are not finite (NaN, inf);
--no-scan leaves that out. Exit status 1 when a layer holds such values (no head can use
them), 0 otherwise.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "extract",
        help="extract backbone features of an image set into a cached HDF5 store",
        description="Run a frozen backbone over an image set and cache pooled features of one\n"
        "or more layers in a resumable HDF5 store (in --cache-dir, or the --out file).",
        epilog=EXTRACT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "source",
        metavar="SOURCE",
        help="built-in dataset (digits), image folder, CSV manifest, torchvision:NAME@ROOT, "
        "hf-dataset:PATH[?image=COL&label=COL] or wds:SHARDS (tar shards, e.g. "
        "/data/shards-{000000..000099}.tar)",
    )
    p.add_argument(
        "--backbone",
        default="efficientnet_lite0",
        help="backbone spec (default: %(default)s; see `featpipe backbones`)",
    )
    p.add_argument(
        "--layers",
        nargs="+",
        default=["pooled"],
        metavar="LAYER",
        help="layers as NAME[:POOLING], e.g. pooled blocks.5:avg layer3:grid:2 "
        "(default: pooled; see `featpipe layers SPEC`)",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--cache-dir",
        default="data/cache",
        help="folder of stores named by their inputs (default: %(default)s)",
    )
    where.add_argument("--out", metavar="FILE", help="write the store to this file instead")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a store at the path even if made from other inputs (with --shard: only "
        "a store that is not this job's, i.e. made from other inputs or laid out otherwise; "
        "the tasks' parted store is joined, so every task can run the same command)",
    )
    p.add_argument(
        "--dtype",
        choices=("float16", "float32"),
        default="float16",
        help="stored feature dtype (default: %(default)s)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="images per forward batch (default: %(default)s)",
    )
    p.add_argument(
        "--chunk-rows",
        type=int,
        default=None,
        metavar="N",
        help="rows per store chunk, the unit of resuming (default: the batch size)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="decoding in parallel (default: min(4, cores); on CUDA every core for CPU "
        "decoding). On CUDA, DataLoader worker processes; on a CPU device, lanes: threads "
        "that each decode a batch and run the model on it with cores/N threads. 0: decode "
        "in the main process, then run the model on every core",
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    add_image_size_option(p)
    p.add_argument(
        "--data-path",
        choices=("auto", "cpu", "gpu"),
        default="auto",
        help="where images are decoded (default: gpu on CUDA, else cpu)",
    )
    add_decode_option(p)
    split = p.add_argument_group("splits (passed to the source)")
    for name in ("val", "test"):
        split.add_argument(
            f"--{name}-fraction",
            type=float,
            metavar="F",
            help=f"share of the images carved out as {name} when the source has no {name} "
            "split (default: 0; digits: 0.2)",
        )
    split.add_argument(
        "--seed", type=int, metavar="S", help="seed of splits and subsampling (default: 0)"
    )
    add_limit_options(split)
    p.add_argument(
        "--on-error",
        choices=ON_ERROR,
        default="fail",
        help="an image that cannot be read, or whose features are NaN or infinite: stop with "
        "its name (fail, the default), or record it as skipped and leave it out (skip; "
        "`featpipe info` lists them)",
    )
    p.add_argument(
        "--hash-contents",
        action="store_true",
        help="fingerprint image bytes instead of file sizes and times",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="run the model through torch.compile (pays off on long GPU runs)",
    )
    p.add_argument(
        "--lock-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="when another process is writing the same store, wait at most this long for it "
        "(default: wait until it finishes, then reuse its store)",
    )
    p.add_argument(
        "--shard",
        metavar="I/N",
        help="task I of a job array of N (Slurm array, Kubernetes indexed job) filling one "
        "parted store; use --out (or the same --cache-dir) in every task. With --overwrite "
        "the first task replaces a store of other inputs or --chunk-rows and the others join "
        "it; delete a store of the same inputs to recompute it",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_extract)

    q = subparsers.add_parser(
        "info",
        help="show what a feature store holds",
        description="Provenance, layers, splits and completeness of a feature store.",
        epilog=INFO_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    q.add_argument("store", metavar="STORE", help="path of a .h5 feature store")
    q.add_argument("--json", action="store_true", help="print the description as JSON")
    q.add_argument(
        "--no-scan",
        action="store_true",
        help="do not read every feature to look for NaN/inf values (quick on a store of many "
        "GB; non_finite is then null in --json)",
    )
    q.set_defaults(func=run_info)

    c = subparsers.add_parser(
        "consolidate",
        help="copy a parted store into one self-contained file",
        description="Copy a complete parted store (filled by torchrun ranks or --shard tasks)\n"
        "into one HDF5 file without virtual datasets, readable by plain h5py.",
        epilog="examples:\n"
        "  featpipe consolidate /scratch/pets.h5 --out pets.h5\n"
        "  featpipe consolidate /scratch/pets.h5 --out pets.h5 --force   # replace pets.h5",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("store", metavar="STORE", help="the parted store's top-level .h5 file")
    c.add_argument("--out", metavar="FILE", required=True, help="the one-file store to write")
    add_force_option(c)
    c.set_defaults(func=run_consolidate)


def _open_source(args: argparse.Namespace):
    from featpipe.data import open_source

    options = {
        name: getattr(args, name)
        for name in ("val_fraction", "test_fraction", "seed")
        if getattr(args, name) is not None
    }
    return apply_limits(open_source(args.source, **options), args, seed=args.seed or 0)


def run_extract(args: argparse.Namespace) -> int:
    from featpipe.distributed.ranks import current_ranks
    from featpipe.extract import extract
    from featpipe.extract.parted import parse_shard

    shard = parse_shard(args.shard) if args.shard else None
    _check_layer_list(args.layers)
    if args.out:
        _check_out_is_not_source(args.out, args.source)
    store = extract(
        _open_source(args),
        args.backbone,
        args.layers,
        cache_dir=args.cache_dir,
        out=args.out,
        overwrite=args.overwrite,
        dtype=args.dtype,
        batch_size=args.batch_size,
        chunk_rows=args.chunk_rows,
        workers=args.workers,
        device=args.device,
        image_size=args.image_size,
        data_path=args.data_path,
        decode=args.decode,
        progress=not args.no_progress,
        hash_contents=args.hash_contents,
        torch_compile=args.compile,
        on_error=args.on_error,
        lock_timeout=args.lock_timeout,
        shard=shard,
    )
    if not current_ranks().is_main:
        return 0  # rank 0 says how the run went
    s = store.extraction
    if s.get("filled_by") and not s.get("complete"):
        # the skip reasons reach the store's file when it completes: counted, not described
        skipped = f", {s['skipped']} of them skipped" if s["skipped"] else ""
        print(
            f"{s['filled_by']}: filled {s['parts_filled']} parts ({s['images']} images in "
            f"{s['seconds']:.1f} s{skipped}); the store is complete once the other tasks "
            f"finish theirs (`featpipe info {store.path}`)"
        )
        return 0
    if s["reused"]:
        print(f"reused cached store: nothing to compute ({len(store)} images)")
    else:
        resumed = " (resumed)" if s.get("resumed") else ""
        skipped_now = s.get("skipped_now", 0)
        left_out = f" ({skipped_now} skipped)" if skipped_now else ""
        print(
            f"extracted {s['images'] - skipped_now} images{left_out} in {s['seconds']:.1f} s "
            f"({s['images_per_s']:.1f} images/s) on {s['device']}{resumed}; "
            f"{format_bytes(s['bytes_written'])} written"
            + (f" by {s['filled_by']}" if s.get("filled_by") else "")
        )
    if s.get("filled_by"):  # a parted store: what every process did
        cost = store.attrs.get("extraction") or {}
        print(
            f"store complete: {len(store)} images in {len(store.parts or [])} parts, filled by "
            f"{', '.join(cost.get('filled_by') or [])} ({cost.get('seconds')} process-seconds)"
        )
    if s.get("skipped"):
        reasons = store.skipped().values()
        described = skipped_images(s["skipped"], count_not_finite(reasons))
        print(f"skipped {described}; `featpipe info {store.path}` lists them")
    print(f"features written to {store.path}")
    return 0


def _check_layer_list(layers: list[str]) -> None:
    """Refuse layers joined by commas: the request parser read 'pooled,stage1:max' as the
    layer 'pooled,stage1' pooled by max, and suggested five unrelated names."""
    joined = next((text for text in layers if "," in text), None)
    if joined is not None:
        spaced = " ".join(name for text in layers for name in text.split(",") if name)
        raise ConfigError(
            f"--layers {joined!r}: layers are separated by spaces, not commas; write "
            f"--layers {spaced}."
        )


def _check_out_is_not_source(out: str, source: str) -> None:
    """Refuse an --out that is the source's own file (a CSV manifest, a parquet or tar file):
    --overwrite replaced it with the store."""
    from featpipe.store.writer import check_out_file

    _, sep, rest = source.partition(":")  # hf-dataset:PATH?image=COL, wds:SHARD.tar
    named = [source] + ([rest.split("?")[0]] if sep else [])
    check_out_file(out, option="--out", inputs=[("image source", text) for text in named])


def _skipped_lines(info: dict) -> list[str]:
    """The skipped images of a store: their count, then the first few with their reasons."""
    first = info["skipped_first"]
    described = skipped_images(info["skipped"], info["skipped_not_finite"])
    lines = [f"skipped     {described}, left out of every split:"]
    lines += [f"  {sample_id}: {reason}" for sample_id, reason in first.items()]
    if info["skipped"] > len(first):
        lines.append(f"  ... and {info['skipped'] - len(first)} more (FeatureStore.skipped())")
    return lines


def run_info(args: argparse.Namespace) -> int:
    from featpipe.errors import StoreInUseError
    from featpipe.store import FeatureStore
    from featpipe.store.parts import parted_at
    from featpipe.store.reader import not_finite_message, part_text

    try:
        info = FeatureStore(args.store).info(scan=not args.no_scan)
    except StoreInUseError:  # shard tasks or ranks are writing parts: show how far they got
        if not parted_at(args.store):
            raise
        return _print_progress(args.store, args.json)
    status = 1 if info["non_finite"] else 0
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return status
    done, total = info["chunks_done"], info["chunks_total"]
    state = "complete" if info["complete"] else "INCOMPLETE (resume with the same extract call)"
    lines = [
        f"store       {info['path']}  ({format_bytes(info['file_size'])}, {info['format']})",
        f"state       {state}: {done}/{total} chunks of {info['rows_per_chunk']} rows",
    ]
    if part := info["part_of"]:  # its rows only: say where the whole store is
        whole = ": open that store for all its rows" if part["store"] else ""
        lines.append(f"part of     {part_text(Path(info['path']), part)}{whole}")
    if info["layout"] == "parts":
        lines.append(
            f"parts       {info['parts_done']} done, {info['parts_pending']} pending, of "
            f"{info['parts']} in {Path(info['path']).with_suffix('.parts')}"
        )
    lines += [
        f"key         {info['key']}",
        f"backbone    {info['backbone']}",
        f"weights     sha256 {info['weights_sha256']}",
        f"preprocess  {json.dumps(info['preprocessing'], sort_keys=True)}",
        f"source      {json.dumps(info['source'], sort_keys=True)}",
        f"fingerprint {info['source_fingerprint']}",
        "compute     " + _compute_text(info.get("compute")),
        f"created     {info['created']} with featpipe {info['featpipe_version']}",
        "versions    " + ", ".join(f"{k} {v}" for k, v in sorted((info["versions"] or {}).items())),
        f"samples     {info['samples']} in {len(info['classes'])} classes; splits "
        + ", ".join(f"{k} {v}" for k, v in info["splits"].items()),
        "layers",
    ]
    if info["skipped"]:
        at = lines.index("layers")
        lines[at:at] = _skipped_lines(info)
    if info["non_finite"]:  # right below the state, which would otherwise look healthy
        lines[2:2] = ["NOT FINITE  " + not_finite_message(Path(info["path"]), info["non_finite"])]
    elif info["non_finite"] is None:
        lines[2:2] = ["finite      not checked (--no-scan)"]
    for name, layer in info["layers"].items():
        lines.append(
            f"  {name:<24} {layer['shape'][0]} x {layer['dim']}  {layer['dtype']}  "
            f"pooling {layer['pooling']}"
        )
    if info.get("extraction"):
        e = info["extraction"]
        runs = len(e.get("runs") or [1])
        lines.append(
            f"extraction  {e.get('images')} images in {e.get('seconds')} s "
            f"({e.get('images_per_s')} images/s) on {e.get('device')}"
            + (f", over {runs} runs" if runs > 1 else "")
        )
    print("\n".join(lines))
    return status


def _print_progress(store: str, as_json: bool) -> int:
    from featpipe.store.lock import describe_owner
    from featpipe.store.parts import parts_dir, progress

    state = progress(store)
    if as_json:
        print(json.dumps({"path": store, "being_written": True, **state}, indent=2))
        return 0
    writers = ", ".join(
        f"{name} by {describe_owner(owner)}" for name, owner in state["parts_writing"].items()
    )
    print(
        f"store       {store}  (being written: its full description once no part is)\n"
        f"parts       {state['parts_done']} done, {len(state['parts_writing'])} being written, "
        f"{state['parts_pending']} pending, of {state['parts']} in {parts_dir(store)}"
        + (f"\nwriting     {writers}" if writers else "")
    )
    return 0


def run_consolidate(args: argparse.Namespace) -> int:
    from featpipe.store.consolidate import consolidate

    store = consolidate(args.store, args.out, force=args.force)
    print(
        f"consolidated {args.store} into {store.path} ({format_bytes(store.path.stat().st_size)})"
    )
    return 0


def _compute_text(compute: dict | None) -> str:
    if not compute:
        return "not recorded (made before featpipe recorded precision and decode path)"
    return ", ".join(f"{k} {v}" for k, v in sorted(compute.items()))
