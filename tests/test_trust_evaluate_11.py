"""Round 11 checks of evaluate/ and report/: memory of the data checks, classes without
images, and comparisons whose gap rounds to zero."""

from __future__ import annotations

import tracemalloc

import numpy as np

from featpipe.evaluate import leakage
from featpipe.evaluate.leakage import check_data, check_store
from featpipe.store.writer import write_arrays


def test_the_data_checks_hold_the_pooled_features_about_once(tmp_path, monkeypatch):
    # Small similarity blocks, so that the features dominate the peak.
    monkeypatch.setattr(leakage, "_SIMILARITIES", 2**16)
    rng = np.random.default_rng(0)
    features = rng.standard_normal((20_000, 512), dtype=np.float32)
    features[18_000:18_010] = features[:10] * 2  # near-duplicates of train rows in test
    splits = ["train"] * 16_000 + ["val"] * 2_000 + ["test"] * 2_000
    store = write_arrays(
        tmp_path / "s.h5", {"pooled": features}, np.zeros(20_000, int), splits, ["x"]
    )
    tracemalloc.start()
    try:
        checks = check_store(store)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        store.close()
    assert peak < 2 * features.nbytes  # 4.4 copies before (store blocks, concatenated,
    # float32 copy, reference rows); now once, plus 2 stored chunks read and ids
    assert sorted(t for t, _, _ in checks.near) == [str(i) for i in range(18_000, 18_010)]
    # Features handed to check_data are the caller's: not scaled in place.
    before = features[:200].copy()
    check_data(
        [str(i) for i in range(200)],
        np.zeros(200, int),
        splits[:100] + ["test"] * 100,
        ["x"],
        features=features[:200],
    )
    assert np.array_equal(features[:200], before)
