"""Evaluation, round 16: compare()'s unused seed, newcombe_interval's export, and
`featpipe check`'s single pass over the store's ids and the source's files."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import featpipe.evaluate
from featpipe.evaluate import compare


def _pair(n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random(n) < 0.8, rng.random(n) < 0.6


def test_compare_warns_that_a_seed_changes_nothing():
    # Before: seed was accepted and silently unused, as if the interval were a bootstrap.
    a, b = _pair()
    with pytest.warns(FutureWarning, match=r"compare\(\) ignores seed=3: .* Leave seed out"):
        seeded = compare("A", a, "B", b, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = compare("A", a, "B", b)
    assert seeded == plain


def test_newcombe_interval_is_exported():
    assert "newcombe_interval" in featpipe.evaluate.__all__
    a, b = _pair()
    low, high = featpipe.evaluate.newcombe_interval(a, b)
    assert low < (a.mean() - b.mean()) < high
    assert set(featpipe.evaluate.__all__) <= set(dir(featpipe.evaluate))
