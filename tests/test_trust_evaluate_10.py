"""Trust sweep of featpipe.evaluate (session 12): metrics, comparisons, cost, leakage."""

from __future__ import annotations

import numpy as np
from PIL import Image

from featpipe.data import open_source
from featpipe.evaluate.leakage import DataChecks, check_data, check_source


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


def test_images_too_small_to_hash_are_named_not_reported_clean(tmp_path):
    # Train images of 64 px, test images 24 px copies of them: no test image was hashed, and the
    # checks said only 'No test image has a near-duplicate in train or val (perceptual hash
    # within 4 bits).'
    rng = np.random.default_rng(0)
    for k in range(4):
        image = Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).resize((64, 64))
        for split, side in (("train", 64), ("test", 24)):
            folder = tmp_path / split / "ab"[k % 2]
            folder.mkdir(parents=True, exist_ok=True)
            image.resize((side, side)).save(folder / f"{k}.png")
    checks = check_source(open_source(str(tmp_path)))
    assert checks.hash_bits is not None and checks.unhashed == {"test": 4}
    text = " ".join(checks.lines())
    assert "The perceptual hash did not compare 4 test image(s)" in text
    assert "smaller than 32 px" in text
    assert DataChecks.from_json(checks.to_json()) == checks


def test_checks_saved_without_the_unhashed_counts_still_read():
    checks = check_data(["a", "b"], np.zeros(2, int), ["train", "test"], ["c"], hashes=["x", "y"])
    saved = checks.to_json()
    del saved["unhashed"]
    assert DataChecks.from_json(saved) == checks
