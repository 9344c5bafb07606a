"""Streamed heads' reads by id (``iter_chunks(by_id=True)``): a store in id order reads its
blocks as stored, with no copy; a store far from it reads each HDF5 chunk once per block;
``id_order`` ranks ids as ``sorted`` does."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from featpipe.data.splits import id_order
from featpipe.store import FeatureStore, write_arrays


def _sorted_order(ids: list[str]) -> np.ndarray:
    """id_order as it was: Python's sorted() of the positions by id."""
    return np.array(sorted(range(len(ids)), key=ids.__getitem__), dtype=np.int64)


@pytest.mark.parametrize("seed", range(20))
def test_id_order_ranks_ids_as_sorted_does(seed):
    rng = random.Random(seed)
    letters = "aAzZ09_-./ éü漢字😀\u0301"
    ids = ["".join(rng.choice(letters) for _ in range(rng.randint(0, 7))) for _ in range(80)]
    ids += [ids[0] + "0", ids[1][:2], "img10", "img9", "img010", "Img9"]  # prefixes, digits
    ids += rng.sample(ids, 10)  # repeats keep their listed order
    rng.shuffle(ids)
    got = id_order(np.array(ids, dtype=object), len(ids))  # as a store's ids are read
    np.testing.assert_array_equal(got, _sorted_order(ids))
    assert got.dtype == np.int64


def _store(path, n: int, order: np.ndarray) -> FeatureStore:
    X = np.random.default_rng(0).normal(size=(n, 2)).astype(np.float32)
    ids = np.array([f"s{i:05d}" for i in range(n)])
    y = np.arange(n) % 3
    return write_arrays(path, {"p": X[order]}, y[order], ["train"] * n, list("abc"),
                        ids=list(ids[order]))  # fmt: skip


def _reads(monkeypatch) -> list[tuple[int, int, np.ndarray]]:
    """Each read of stored rows, as it comes: ``(start, stop, rows read)``."""
    reads, real = [], FeatureStore.read_rows

    def read_rows(self, ds, layer, start, stop):
        reads.append((start, stop, real(self, ds, layer, start, stop)))
        return reads[-1][2]

    monkeypatch.setattr(FeatureStore, "read_rows", read_rows)
    return reads


def test_a_store_in_id_order_yields_its_blocks_as_read(tmp_path, monkeypatch):
    store = _store(tmp_path / "s.h5", 300, np.arange(300))
    reads = _reads(monkeypatch)
    blocks = list(store.iter_chunks("p", rows=64, by_id=True))
    assert len(blocks) == len(reads) == 5
    assert all(x is r for (x, _), (_, _, r) in zip(blocks, reads, strict=True))  # no copy


def test_a_block_far_from_id_order_reads_each_hdf5_chunk_once(tmp_path, monkeypatch):
    n, chunk, rows = 20000, 4096, 6000  # write_arrays stores chunks of 4096 rows
    store = _store(tmp_path / "s.h5", n, np.random.default_rng(1).permutation(n))
    assert store.rows_per_chunk == chunk
    reads = _reads(monkeypatch)
    blocks, read = [], 0
    for block in store.iter_chunks("p", rows=rows, by_id=True):
        # the chunks each read of this block touches: none twice (a window of 6000 rows from
        # row 0 would end inside the second chunk, and the next start there again)
        touched = [range(a // chunk, (b - 1) // chunk + 1) for a, b, _ in reads[read:]]
        assert sum(map(len, touched)) == len(set().union(*touched)) == math.ceil(n / chunk)
        assert max(b - a for a, b, _ in reads[read:]) <= rows
        blocks.append(block)
        read = len(reads)
    assert [len(y) for _, y in blocks] == [6000, 6000, 6000, 2000]
    X = np.concatenate([x for x, _ in blocks])  # the rows of the ids in order
    want, _ = store.arrays("p", order=np.argsort(np.array(store.ids()), kind="stable"))
    np.testing.assert_array_equal(X, want)
