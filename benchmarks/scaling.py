"""Scaling out extraction: images/s of 1 and 2 processes, and what parts cost against one file.

On the same source, backbone and chunking, each in a fresh folder:

  (1) one file     ``featpipe extract`` in one process: today's one-file store
  (1') pinned      the same, pinned to the cores one of P ranks gets (a rank's thread count)
  (2) one, parts   ``featpipe extract --shard 0/1``: the same process filling a parted store
  (3) torchrun     ``torchrun --nproc-per-node P -m featpipe extract``: P ranks, one parted store

It prints, for each, the wall time of the command (start-up included), the extraction seconds
recorded in the store (summed over ranks for (3)) and images/s; for (3) the job's images/s
(rows over the slowest rank's seconds) against (1) and against P times (1'): do the parts add
up? ``--repeat R`` runs the list R times, alternating, and keeps each one's best (on a shared
machine other processes' load moves single runs by tens of percent). Then the cost of the
parted layout: per part while writing ((2) - (1) over the number of parts), and reading (open
and read every row of a layer) from the parted store against the one file and against its
consolidated copy. Last, a ready command line for N GPUs. Example (about 3 minutes on a 2-core
CPU):

    python benchmarks/scaling.py --image-size 48 --processes 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(argv: list[str], env: dict, cores: set[int] | None = None) -> float:
    start = time.perf_counter()
    pin = (lambda: os.sched_setaffinity(0, cores)) if cores else None
    done = subprocess.run(argv, env=env, capture_output=True, text=True, preexec_fn=pin)
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(argv)}\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def extraction(path: Path) -> dict:
    import h5py

    with h5py.File(path, "r") as f:
        return json.loads(f.attrs["extraction"])


def job_seconds(cost: dict) -> float:
    """Seconds of an extraction: its slowest writer's (ranks work side by side)."""
    writers = [r["seconds"] for r in cost.get("runs") or [] if "filled_by" in r]
    return max(writers) if writers else cost["seconds"]


def read_seconds(path: Path, layer: str, repeat: int = 3) -> float:
    from featpipe.store import FeatureStore

    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        FeatureStore(path).arrays(layer)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="digits")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=48)
    parser.add_argument("--chunk-rows", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0, help="loader workers per process")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args()

    env = {**os.environ, "PYTHONPATH": str(REPO), "FEATPIPE_PROGRESS": "lines"}
    common = [
        args.source, "--backbone", args.backbone, "--image-size", str(args.image_size),
        "--chunk-rows", str(args.chunk_rows), "--batch-size", str(args.batch_size),
        "--workers", str(args.workers), "--no-progress",
    ]  # fmt: skip
    featpipe = [sys.executable, "-m", "featpipe", "extract", *common]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    torchrun += ["--nproc-per-node", str(args.processes), "-m", "featpipe", "extract", *common]
    folder = Path(tempfile.mkdtemp(prefix="featpipe-scaling-"))
    try:
        cores = sorted(os.sched_getaffinity(0))
        share = set(cores[: max(1, len(cores) // args.processes)])
        one, parted, ranks = folder / "one.h5", folder / "parted.h5", folder / "ranks.h5"
        pinned = folder / "pinned.h5"
        commands = {
            "one file": ([*featpipe, "--out", str(one)], None, one),
            "one file, pinned": ([*featpipe, "--out", str(pinned)], share, pinned),
            "one process, parts": (
                [*featpipe, "--out", str(parted), "--shard", "0/1"],
                None,
                parted,
            ),
            f"torchrun x{args.processes}": ([*torchrun, "--out", str(ranks)], None, ranks),
        }
        walls: dict[str, float] = {}
        costs: dict[str, dict] = {}
        for _ in range(args.repeat):
            for name, (argv, pin, path) in commands.items():
                path.unlink(missing_ok=True)  # a fresh store each time
                shutil.rmtree(path.with_suffix(".parts"), ignore_errors=True)
                wall = run(argv, env, pin)
                cost = extraction(path)
                if name not in costs or job_seconds(cost) < job_seconds(costs[name]):
                    walls[name], costs[name] = wall, cost
        from featpipe.store import FeatureStore
        from featpipe.store.consolidate import consolidate

        n = len(FeatureStore(one))
        n_parts = costs["one process, parts"]["parts"]
        print(f"{n} images of {args.source}, {args.backbone} at {args.image_size} px, chunks of "
              f"{args.chunk_rows} rows, {n_parts} parts; {os.cpu_count()} cores\n")  # fmt: skip
        print(f"{'run':<22} {'wall s':>7} {'extract s':>10} {'img/s':>8}  per rank")
        results = {}
        for name, cost in costs.items():
            runs = cost.get("runs") or []
            seconds = job_seconds(cost)
            rate = n / seconds
            per_rank = ", ".join(
                f"{r['filled_by']} {r['images']} img {r['images'] / r['seconds']:.0f}/s"
                for r in runs
                if "filled_by" in r and r["seconds"] > 0
            )
            results[name] = {"wall_s": walls[name], "seconds": seconds, "images_per_s": rate}
            print(f"{name:<22} {walls[name]:>7.1f} {seconds:>10.2f} {rate:>8.1f}  {per_rank}")
        base = results["one file"]["images_per_s"]
        scaled = results[f"torchrun x{args.processes}"]["images_per_s"]
        alone = results["one file, pinned"]["images_per_s"]
        print(
            f"\ntorchrun x{args.processes} / one file: {scaled / base:.2f}; torchrun "
            f"x{args.processes} / ({args.processes} x one pinned process): "
            f"{scaled / (args.processes * alone):.2f}"
        )
        part_cost = results["one process, parts"]["seconds"] - results["one file"]["seconds"]
        print(f"writing: parts cost {part_cost / n_parts * 1000:+.0f} ms per part "
              f"({part_cost:+.2f} s over {n_parts} parts)")  # fmt: skip
        consolidated = consolidate(ranks, folder / "consolidated.h5").path
        layer = "pooled"
        reads = {
            "one file": read_seconds(one, layer),
            "parted": read_seconds(ranks, layer),
            "consolidated": read_seconds(consolidated, layer),
        }
        print("reading every row of one layer: " + ", ".join(
            f"{k} {v * 1000:.0f} ms" for k, v in reads.items()))  # fmt: skip
        results["read_s"] = reads
        print("\nOn N GPUs of one machine (one rank per GPU; `auto` is cuda:LOCAL_RANK):")
        print(f"  torchrun --nproc-per-node N -m featpipe extract {args.source} "
              f"--backbone {args.backbone} --out STORE.h5")  # fmt: skip
        print("On several machines under Slurm (one task per node):")
        print("  srun torchrun --nnodes $SLURM_NNODES --nproc-per-node N --rdzv-backend c10d "
              "--rdzv-endpoint $HEAD:29500 --rdzv-id $SLURM_JOB_ID -m featpipe extract ... "
              "--out STORE.h5")  # fmt: skip
        print("As a job array (no torchrun): featpipe extract ... --out STORE.h5 "
              "--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT")  # fmt: skip
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
