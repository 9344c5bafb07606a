"""Time of one pass of the streamed heads' reads (``iter_chunks(by_id=True)``) against a pass
of the stored blocks (``by_id=False``), side by side in one process, as a ratio.

Two stores of the same ``--rows`` rows of ``--dim`` float32 features (all train): one listed
in id order, one in a random order of its ids. Each is read in ``--chunks`` blocks (several
counts: the cost of a store far from id order grows with them, as each block gathers its rows
from up to every stored block). Passes alternate, ``--repeats`` times; the best of each is
kept, so the ratios hold on a loaded machine. Each ratio is followed by the heads' estimate
of it (``by_id_read_cost``: the warning a store far from id order gets).

    python benchmarks/streamed_by_id_reads.py --rows 30000 --dim 128 --chunks 4 15 60
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np

from featpipe.heads.streaming import by_id_read_cost
from featpipe.store import FeatureStore, write_arrays


def _store(path: Path, rows: int, dim: int, order: np.ndarray) -> FeatureStore:
    X = np.random.default_rng(0).normal(size=(rows, dim)).astype(np.float32)
    ids = np.array([f"img{i:08d}" for i in range(rows)])
    y = np.arange(rows) % 10
    return write_arrays(path, {"pooled": X[order]}, y[order], ["train"] * rows,
                        list("abcdefghij"), ids=list(ids[order]))  # fmt: skip


def _pass(store: FeatureStore, rows: int, by_id: bool) -> float:
    start = time.perf_counter()
    for _ in store.iter_chunks("pooled", "train", rows=rows, by_id=by_id):
        pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=30000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--chunks", type=int, nargs="+", default=[4, 15, 60])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        in_order = _store(Path(tmp) / "sorted.h5", args.rows, args.dim, np.arange(args.rows))
        shuffled = np.random.default_rng(1).permutation(args.rows)
        far = _store(Path(tmp) / "shuffled.h5", args.rows, args.dim, shuffled)
        for chunks in args.chunks:
            rows = math.ceil(args.rows / chunks)
            runs = {
                "stored blocks": (far, False),
                "by id, store in id order": (in_order, True),
                "by id, store in random order": (far, True),
            }
            best = {name: math.inf for name in runs}
            for _ in range(args.repeats):
                for name, (store, by_id) in runs.items():
                    best[name] = min(best[name], _pass(store, rows, by_id))
            base = best["stored blocks"]
            print(f"{chunks} chunks of {rows} rows: stored blocks {base:.3f} s; " + "; ".join(
                f"{name} {best[name] / base:.2f}x (estimated "
                f"{by_id_read_cost(store, rows):.1f}x)"
                for name, (store, _) in runs.items() if name != "stored blocks"
            ))  # fmt: skip


if __name__ == "__main__":
    main()
