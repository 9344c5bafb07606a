"""Peak memory of the data checks (``featpipe check STORE``, the report's checks) on a synthetic
store, as a multiple of its pooled features in float32, and with ``--baseline REV`` side by side
with ``featpipe/evaluate/leakage.py`` as it was at git revision REV (same store, same process).

Peak: numpy's allocations traced by ``tracemalloc`` while ``check_store`` runs (the store's
HDF5 reads land in numpy arrays; h5py's own small buffers are not counted). The store holds
``--rows`` rows of ``--dim`` random features, 80 % train, 10 % val, 10 % test, with 50 test
rows copied from train (slightly changed) so that the near-duplicate search finds something;
the findings of both versions are compared.

    python benchmarks/check_memory.py --rows 50000 --dim 512 --baseline 531ed4f
"""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys
import tempfile
import time
import tracemalloc
import types
from pathlib import Path

import numpy as np

from featpipe.evaluate import leakage
from featpipe.store.writer import write_arrays

ROOT = Path(__file__).resolve().parents[1]


def _store(folder: Path, rows: int, dim: int):
    rng = np.random.default_rng(0)
    features = rng.standard_normal((rows, dim), dtype=np.float32)
    n_train, n_val = rows * 8 // 10, rows // 10
    splits = ["train"] * n_train + ["val"] * n_val + ["test"] * (rows - n_train - n_val)
    copies = rng.choice(n_train, 50, replace=False)
    features[n_train + n_val : n_train + n_val + 50] = features[copies] * 1.01 + 1e-3
    labels = rng.integers(0, 10, rows)
    classes = [str(c) for c in range(10)]
    return write_arrays(folder / "s.h5", {"pooled": features}, labels, splits, classes)


def _baseline(rev: str) -> types.ModuleType:
    path = "featpipe/evaluate/leakage.py"
    text = subprocess.run(
        ["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    module = types.ModuleType(f"leakage_{rev}")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(text, f"{rev}:{path}", "exec"), module.__dict__)
    return module


def _measure(module: types.ModuleType, store) -> tuple[int, float, object]:
    gc.collect()
    tracemalloc.start()
    begin = time.perf_counter()
    checks = module.check_store(store)
    seconds = time.perf_counter() - begin
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak, seconds, checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--baseline", help="a git revision to compare with (e.g. HEAD~1)")
    args = parser.parse_args()
    size = args.rows * args.dim * 4
    with tempfile.TemporaryDirectory() as folder:
        store = _store(Path(folder), args.rows, args.dim)
        runs = [("current", leakage)]
        if args.baseline:
            runs.insert(0, (args.baseline, _baseline(args.baseline)))
        print(f"{args.rows} x {args.dim} pooled features: {size / 2**20:.0f} MiB in float32")
        results = {}
        for name, module in runs:
            peak, seconds, checks = _measure(module, store)
            results[name] = (peak, checks)
            print(
                f"{name:>12}: peak {peak / 2**20:7.0f} MiB = {peak / size:4.2f} x the features, "
                f"{seconds:5.1f} s, {len(checks.near)} near-duplicates"
            )
        store.close()
    if args.baseline:
        (old, old_checks), (new, new_checks) = results.values()
        same = old_checks.to_json() == new_checks.to_json()
        print(f"peak before / after: {old / new:.2f}; identical findings: {same}")


if __name__ == "__main__":
    main()
