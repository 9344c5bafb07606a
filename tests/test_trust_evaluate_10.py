"""Trust sweep of featpipe.evaluate (session 12): metrics, comparisons, cost, leakage."""

from __future__ import annotations

import numpy as np

from featpipe.evaluate.leakage import check_data


def test_a_cosine_threshold_of_1_finds_every_test_image_with_a_train_images_features():
    # float32 cosines of identical rows land a few 1e-7 either side of 1: at --cosine 1 (valid,
    # "identical features only") 4 of these 10 copies were missed.
    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, 64)).astype(np.float32)
    features[150:160] = features[:10]
    features[160:170] = 3 * features[10:20]  # the same direction at another scale
    ids = [f"i{k}" for k in range(200)]
    splits = ["train"] * 150 + ["test"] * 50
    checks = check_data(ids, np.zeros(200, int), splits, ["a"], features=features, threshold=1.0)
    found = {t: (r, c) for t, r, c in checks.near}
    assert sorted(found) == sorted(ids[150:170])
    assert all(c == 1.0 for _, c in found.values())  # not 1.0000002
    assert all(found[f"i{150 + k}"][0] == f"i{k}" for k in range(20))
