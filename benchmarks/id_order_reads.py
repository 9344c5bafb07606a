"""Peak memory of ``FeatureSplits.fit_rows`` on a store listed out of id order: the split read in
id order (``arrays(order=...)``, each block put in place) against the old way, the split loaded
as stored and then permuted (a second copy), side by side in one process.

Peak: numpy's and Python's allocations traced by ``tracemalloc`` (h5py's own small buffers are
not counted), as a multiple of the split's features in float32. The store holds ``--rows`` rows
of ``--dim`` random features, all train, written in a random order of their ids, in chunks of
``--rows-per-chunk`` rows (a read takes 8 chunks at a time: keep it small beside the split, as
in a real store). Both loads are checked equal.

    python benchmarks/id_order_reads.py --rows 60000 --dim 512 --rows-per-chunk 256
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np

from featpipe.data.splits import id_order
from featpipe.heads.splits import FeatureSplits
from featpipe.store.reader import FeatureStore
from featpipe.store.writer import write_arrays


def _store(path: Path, rows: int, dim: int, rows_per_chunk: int) -> FeatureStore:
    rng = np.random.default_rng(0)
    order = rng.permutation(rows)  # the images listed in another order than their ids'
    return write_arrays(
        path,
        {"pooled": rng.standard_normal((rows, dim), dtype=np.float32)},
        order % 10,
        np.zeros(rows, np.uint8),
        list("abcdefghij"),
        ids=[f"img{i:08d}" for i in order],
        attrs={"key": "bench"},
        rows_per_chunk=rows_per_chunk,
    )


def _peak(load) -> tuple[int, np.ndarray]:
    gc.collect()
    tracemalloc.start()
    X, _ = load()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak, X


def _old_fit_rows(store: FeatureStore) -> tuple[np.ndarray, np.ndarray]:
    """fit_rows before the id-ordered read: the split as stored, then a permuted copy."""
    X, y = store.arrays("pooled", "train")
    order = id_order(store.ids("train"), len(y))
    return X[order], y[order]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=60000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--rows-per-chunk", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = _store(Path(tmp) / "s.h5", args.rows, args.dim, args.rows_per_chunk)
        split = args.rows * args.dim * 4
        old, X_old = _peak(lambda: _old_fit_rows(store))
        new, X_new = _peak(lambda: FeatureSplits(store, "pooled").fit_rows("train"))
        assert np.array_equal(X_old, X_new), "the two loads differ"
    print(f"fit_rows peak, a split of {split / 2**20:.0f} MiB out of id order:")
    print(f"  old (load, then permute) {old / split:.2f}x the split")
    print(f"  new (read in id order)   {new / split:.2f}x the split; new/old = {new / old:.2f}")


if __name__ == "__main__":
    main()
