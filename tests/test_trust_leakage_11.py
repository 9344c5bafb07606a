"""Data checks, round 11: test hashes are compared with train and val in eight orientations,
which cost 8 popcounts per pair (2,000 x 100,000 hashes: 4.2 s). An index on bands of the hash
compares only the pairs that can be within the threshold, with exactly the same findings."""

from __future__ import annotations

import numpy as np
import pytest

from featpipe.evaluate import leakage


def _flip(value: int, bits: np.ndarray) -> int:
    return value ^ sum(1 << int(b) for b in bits)


def _hashes(t: int, n_ref: int, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random reference hashes, repeated ones among them, and test hashes of which most are a
    reference hash in one of its orientations with exactly t or t + 1 bits flipped."""
    rng = np.random.default_rng(seed)
    ref = rng.integers(0, 2**64, n_ref, dtype=np.uint64)
    ref[n_ref // 2 :: 7] = ref[: n_ref // 2 : 7][: len(ref[n_ref // 2 :: 7])]  # repeats: ties
    test = rng.integers(0, 2**64, n_test, dtype=np.uint64)
    for j in range(0, n_test, 4):
        for k in range(j, min(j + 3, n_test)):  # three copies of one hash: at t, t + 1, t + 1
            turn = leakage._orientations(ref[rng.integers(n_ref)][None])[rng.integers(8)][0]
            apart = t if k == j else t + 1
            test[k] = _flip(int(turn), rng.choice(64, apart, replace=False))
    return test, ref


def _brute_within(test: np.ndarray, ref: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray]:
    return leakage._within(*leakage._closest(test, ref), t)


@pytest.mark.parametrize("t", [0, 1, 2, 4, 7, 8, 12, 63])
def test_the_index_finds_exactly_the_pairs_of_every_pair_compared(t):
    test, ref = _hashes(t, 600, 120, seed=t)
    best, top = leakage._closest_within(test, ref, t)
    want = _brute_within(test, ref, t)
    assert (best <= t).sum() >= 30  # at distance t: found, at t + 1 only by chance
    np.testing.assert_array_equal(best, want[0])
    np.testing.assert_array_equal(top, want[1])


def test_crowded_bands_and_small_blocks_find_the_same(monkeypatch):
    # Flat images hash alike: many reference hashes equal, or a bit or two apart, share every
    # band with a flat test hash. Those rows are compared with all hashes; small blocks of
    # candidates split the rest.
    rng = np.random.default_rng(5)
    flat = 1 << 63
    near_flat = [_flip(flat, rng.choice(64, rng.integers(0, 6), replace=False)) for _ in range(300)]
    test, ref = _hashes(4, 400, 80, seed=11)
    ref = np.concatenate([ref, np.array(near_flat + [flat] * 50, np.uint64)])
    test = np.concatenate([test, np.array([*near_flat[:40], flat], np.uint64)])
    want = _brute_within(test, ref, 4)
    for similarities in (2**22, 64, 8):
        monkeypatch.setattr(leakage, "_SIMILARITIES", similarities)
        best, top = leakage._closest_within(test, ref, 4)
        np.testing.assert_array_equal(best, want[0])
        np.testing.assert_array_equal(top, want[1])


def test_near_hashes_compares_a_small_share_of_the_pairs(monkeypatch):
    # Before: every test hash in 8 orientations against every train and val hash.
    test, ref = _hashes(4, 20_000, 200, seed=3)
    ids = [f"r{i}" for i in range(len(ref))] + [f"t{i}" for i in range(len(test))]
    splits = np.array(["train", "val"] * (len(ref) // 2) + ["test"] * len(test))
    hashes = dict(zip(ids, map(int, np.concatenate([ref, test])), strict=True))
    compared = []
    popcount = leakage._popcount
    monkeypatch.setattr(leakage, "_popcount", lambda x: compared.append(x.size) or popcount(x))
    found = leakage._near_hashes(hashes, splits, ids, 4)
    assert sum(compared) < 0.01 * 8 * len(test) * len(ref)
    best, top = _brute_within(test, ref, 4)
    want = [[f"t{k}", ids[top[k]], int(best[k])] for k in np.flatnonzero(best <= 4)]
    assert found == sorted(want, key=lambda f: f[2])
    assert len(found) >= 50
