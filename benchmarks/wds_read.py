"""What reading WebDataset shards by row costs, against webdataset's own stream and image files.

Writes the JPEGs of an ImageFolder tree into tar shards with webdataset's ``TarWriter`` (keys,
``.jpg``, ``.cls``), then measures on the warm page cache:

- indexing: opening ``wds:`` (one pass over the tar headers) in this process alone, and with a
  process per core (many shards), in samples/s;
- reading every image's bytes: (a) the files of the folder, (b) webdataset's sequential stream
  (``webdataset.WebDataset``), (c) featpipe's rows in order and (d) in a random order;
  images/s and the ratios c/b, d/b, c/a.

    python benchmarks/make_jpegs.py /tmp/bench_jpegs_2000 --n 2000
    python benchmarks/wds_read.py --images /tmp/bench_jpegs_2000 --per-shard 100
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import webdataset

from featpipe.data import ImageFolderSource, WebDatasetSource
from featpipe.data import shards as shards_module


def write_shards(folder: ImageFolderSource, out: Path, per_shard: int) -> str:
    """The folder's images as ``out/shards-NNNNNN.tar``; returns the ``wds:`` pattern."""
    with webdataset.ShardWriter(str(out / "shards-%06d.tar"), maxcount=per_shard) as writer:
        for row in range(len(folder)):
            key = folder.ids[row].rsplit(".", 1)[0].replace("/", "_")
            writer.write({"__key__": key, "jpg": folder.read_bytes(row), "cls": folder.labels[row]})
    last = len(list(out.glob("shards-*.tar"))) - 1
    return f"{out}/shards-{{000000..{last:06d}}}.tar"


def timed(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", required=True, help="an ImageFolder tree (make_jpegs.py)")
    p.add_argument("--per-shard", type=int, default=100, help="samples per shard (default 100)")
    p.add_argument("--repeat", type=int, default=3, help="best of R runs (default 3)")
    args = p.parse_args()

    folder = ImageFolderSource(args.images)
    n = len(folder)
    with tempfile.TemporaryDirectory() as tmp:
        spec = write_shards(folder, Path(tmp), args.per_shard)
        source = WebDatasetSource(spec)
        shards = len(source.shards)
        print(f"{n} images, {shards} shards of up to {args.per_shard}, warm page cache")

        pooled = min(timed(lambda: WebDatasetSource(spec)) for _ in range(args.repeat))
        shards_module._POOL_MIN_SHARDS = 10**9  # one process
        alone = min(timed(lambda: WebDatasetSource(spec)) for _ in range(args.repeat))
        print(
            f"index: one process {n / alone:,.0f} samples/s, "
            f"a process per core {n / pooled:,.0f} samples/s ({alone / pooled:.2f}x)"
        )

        def stream() -> None:
            for _ in webdataset.WebDataset(spec, shardshuffle=False, empty_check=False):
                pass

        order = np.random.default_rng(0).permutation(n)
        runs = {
            "(a) image files": lambda: [folder.read_bytes(i) for i in range(n)],
            "(b) webdataset stream": stream,
            "(c) featpipe rows, in order": lambda: [source.read_bytes(i) for i in range(n)],
            "(d) featpipe rows, random": lambda: [source.read_bytes(int(i)) for i in order],
        }
        rates = {}
        for name, work in runs.items():
            rates[name] = n / min(timed(work) for _ in range(args.repeat))
            print(f"read {name:30s} {rates[name]:>10,.0f} images/s")
        a, b, c, d = rates.values()
        print(f"c/b {c / b:.2f}   d/b {d / b:.2f}   c/a {c / a:.2f}")


if __name__ == "__main__":
    main()
