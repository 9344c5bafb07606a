"""Embedder throughput on a CPU: ``transform`` in lanes against one batch at a time.

On the same JPEG files, in one process, alternating so that a machine whose speed drifts hits
both alike:

  (1) serial  ``Embedder(..., n_jobs=1)``: one batch after another, each decoded in this thread
              and run on every core (what ``transform`` did before lanes);
  (l) lanes   ``Embedder(...)``: a lane per core (at most 4), each decoding a batch and running
              it on its share of the cores (featpipe/extract/lanes.py), as extraction does.

It prints images/s of each, the ratio l/1 per repeat and its median, and the largest feature
difference between the two (fp32: rounding only). Example (this 2-core CPU, about 2 minutes):

    python benchmarks/make_jpegs.py /tmp/jpegs960 --n 960
    python benchmarks/embedder_throughput.py --images /tmp/jpegs960 --n-images 480 --repeat 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from featpipe.heads import Embedder


def rate(embedder: Embedder, paths: list[str]) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    out = embedder.transform(paths)
    return len(paths) / (time.perf_counter() - start), out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, required=True, help="a folder of JPEGs (any depth)")
    parser.add_argument("--n-images", type=int, default=480)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    paths = sorted(str(p) for p in args.images.rglob("*.jpg"))[: args.n_images]
    if not paths:
        print(f"error: no .jpg files under {args.images}", file=sys.stderr)
        return 2
    options = dict(image_size=args.image_size, batch_size=args.batch_size, device="cpu")
    serial = Embedder(args.backbone, n_jobs=1, **options).fit()
    lanes = Embedder(args.backbone, **options).fit()
    serial.transform(paths[: args.batch_size])  # warm-up: first-call allocations
    lanes.transform(paths[: 2 * args.batch_size])
    print(
        f"{args.backbone} at {args.image_size} px, {len(paths)} images, batch "
        f"{args.batch_size}, {torch.get_num_threads()} threads",
        flush=True,
    )
    runs: dict[str, list[float]] = {"serial": [], "lanes": []}
    for _ in range(args.repeat):
        one, a = rate(serial, paths)
        many, b = rate(lanes, paths)
        runs["serial"].append(one)
        runs["lanes"].append(many)
        print(f"  serial {one:7.1f} img/s   lanes {many:7.1f} img/s   l/1 {many / one:.2f}")
    ratios = [m / o for m, o in zip(runs["lanes"], runs["serial"], strict=True)]
    print(f"max |feature difference| {float(np.abs(a - b).max()):.2e}")
    print(f"lanes / one batch at a time: paired median {statistics.median(ratios):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
