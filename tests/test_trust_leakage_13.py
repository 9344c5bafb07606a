"""Data checks, round 13: thresholds of 8 bits or more compared every pair of hashes (bands
under a byte matched too many). Bands probed with a few bits flipped (multi-index hashing)
find exactly the pairs of every pair compared, at a small share of the cost."""

from __future__ import annotations

import numpy as np
import pytest
from test_trust_leakage_11 import _brute_within, _flip, _hashes

from featpipe.evaluate import leakage


def _assert_same(test: np.ndarray, ref: np.ndarray, t: int) -> None:
    best, top = leakage._closest_within(test, ref, t)
    want = _brute_within(test, ref, t)
    np.testing.assert_array_equal(best, want[0])
    np.testing.assert_array_equal(top, want[1])


@pytest.mark.parametrize("t", [8, 9, 10, 11, 12])
@pytest.mark.parametrize("n_ref", [600, 20_000])
def test_random_hashes_find_exactly_the_pairs_of_every_pair_compared(t, n_ref):
    test, ref = _hashes(t, n_ref, 120, seed=t)
    assert (_brute_within(test, ref, t)[0] <= t).sum() >= 30
    _assert_same(test, ref, t)


@pytest.mark.parametrize("t", [8, 9, 10, 11, 12])
@pytest.mark.parametrize("n_ref", [600, 20_000])
def test_pairs_apart_at_the_edge_of_every_band_are_found(t, n_ref):
    # The hardest pairs for the pigeonhole: exactly t bits apart, every band but one flipped
    # one bit past its radius, the one left at its radius. Only that band's probes find them.
    rng = np.random.default_rng(t)
    ref = rng.integers(0, 2**64, n_ref, dtype=np.uint64)
    radii = leakage._band_plan(t, np.unique(ref))
    assert radii is not None
    bands = [np.arange(k, 64, len(radii)) for k in range(len(radii))]
    test = []
    for j in range(len(radii)):
        for _ in range(8):
            flips = [
                rng.choice(b, r + (k != j), replace=False)
                for k, (b, r) in enumerate(zip(bands, radii, strict=True))
            ]
            flipped = np.concatenate(flips)
            over = len(flipped) - t  # radii + 1 sum to t + 1 or more: drop the extra flips
            keep = np.concatenate(
                [flips[j], rng.permutation(np.concatenate(flips[:j] + flips[j + 1 :]))]
            )
            original = int(ref[rng.integers(n_ref)])  # as it is: flips stay in their bands
            test.append(_flip(original, keep[: len(keep) - max(over, 0)]))
    test = np.array(test, np.uint64)
    assert (_brute_within(test, ref, t)[0] <= t).all()
    _assert_same(test, ref, t)


def test_crowded_buckets_and_small_blocks_find_the_same(monkeypatch):
    # Flat images hash alike: their hashes fill the same buckets of every band.
    rng = np.random.default_rng(5)
    flat = 1 << 63
    near_flat = [
        _flip(flat, rng.choice(64, rng.integers(0, 12), replace=False)) for _ in range(300)
    ]
    test, ref = _hashes(10, 400, 80, seed=11)
    ref = np.concatenate([ref, np.array(near_flat + [flat] * 50, np.uint64)])
    test = np.concatenate([test, np.array([*near_flat[:40], flat], np.uint64)])
    for similarities in (2**22, 64, 8):
        monkeypatch.setattr(leakage, "_SIMILARITIES", similarities)
        for t in (8, 10, 12):
            _assert_same(test, ref, t)


@pytest.mark.parametrize("t", [8, 12])
def test_the_index_compares_a_small_share_of_the_pairs_at_large_thresholds(monkeypatch, t):
    # Before: from 8 bits, every test hash in 8 orientations against every reference hash.
    test, ref = _hashes(t, 20_000, 200, seed=3)
    compared = []
    popcount = leakage._popcount
    monkeypatch.setattr(leakage, "_popcount", lambda x: compared.append(x.size) or popcount(x))
    best, _ = leakage._closest_within(test, ref, t)
    assert sum(compared) < 0.05 * 8 * len(test) * len(ref)
    assert (best <= t).sum() >= 50


def test_thresholds_no_split_helps_compare_every_pair():
    assert leakage._band_plan(40, np.arange(50_000, dtype=np.uint64)) is None
    _assert_same(*_hashes(40, 300, 40, seed=1), 40)
