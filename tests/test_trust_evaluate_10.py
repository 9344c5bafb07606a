"""Trust sweep of featpipe.evaluate (session 12): metrics, comparisons, cost, leakage."""

from __future__ import annotations

import numpy as np
from PIL import Image

from featpipe.data import open_source
from featpipe.evaluate.cost import Cost, Extraction, Usage
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
    assert "The perceptual hash did not compare 4 test images" in text
    assert "smaller than 32 px" in text
    assert DataChecks.from_json(checks.to_json()) == checks


def test_checks_saved_without_the_unhashed_counts_still_read():
    checks = check_data(["a", "b"], np.zeros(2, int), ["train", "test"], ["c"], hashes=["x", "y"])
    saved = checks.to_json()
    del saved["unhashed"]
    assert DataChecks.from_json(saved) == checks


def _folder(root, images: dict[str, Image.Image]):
    for name, image in images.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        image.save(root / name)
    return open_source(str(root))


def test_16_bit_images_are_hashed_as_the_backbone_sees_them_not_clipped_white(tmp_path):
    # Pillow's convert("L") clips 16-bit values above 255: every image of values 300..65535
    # was plain white to the hash, and each test image a near-duplicate (0 bits) of a train one.
    rng = np.random.default_rng(1)
    images = {}
    for name in ["train/a/0.png", "train/b/1.png", "test/a/2.png", "test/b/3.png"]:
        small = Image.fromarray((rng.random((8, 8)) * 60000 + 2000).astype(np.float32))
        pixels = np.asarray(small.resize((64, 64), Image.Resampling.BICUBIC))
        images[name] = Image.fromarray(pixels.clip(300, 65535).astype(np.uint16))
    assert images["test/a/2.png"].mode == "I;16"
    checks = check_source(_folder(tmp_path, images))
    assert checks.hash_bits is not None and checks.near_hash == []


def test_a_transparent_background_is_hashed_on_white_as_the_backbone_sees_it(tmp_path):
    # The same icon over other hidden colours (alpha 0) is the same image to a backbone (alpha
    # on white); the hash read the hidden colours and missed the copy.
    rng = np.random.default_rng(2)
    images = {}
    for name in ("train/a/0.png", "test/a/0.png", "train/b/1.png", "test/b/1.png"):
        rgba = np.zeros((64, 64, 4), np.uint8)
        rgba[..., :3] = rng.integers(0, 256, (64, 64, 3))
        side = 4 if "/a/" in name else 28  # two icons: a thin bar and a block
        rgba[16:48, 20 : 20 + side] = (0, 0, 0, 255)
        images[name] = Image.fromarray(rgba)
    checks = check_source(_folder(tmp_path, images))
    assert checks.near_hash == [
        ["test/a/0.png", "train/a/0.png", 0],
        ["test/b/1.png", "train/b/1.png", 0],
    ]


def test_a_reused_store_records_no_extraction_peak_of_its_own():
    # The peak measured while a cached store was opened is not its extraction's: the row said
    # extraction_peak_host_bytes = the process's memory at that moment.
    usage = Usage(seconds=1.0, peak_host_bytes=5 << 20)
    reused = Extraction(seconds=30.0, images=100, reused=True, peak_host_bytes=300 << 20)
    made = Extraction(seconds=30.0, images=100, reused=False, peak_host_bytes=900 << 20)
    kwargs = {"fit_seconds": 1.0, "predict_seconds": 0.5, "n_test": 10, "trainable_params": 3}
    assert "extraction_peak_host_bytes" not in Cost.of(usage, extraction=reused, **kwargs).to_json()
    assert Cost.of(usage, extraction=made, **kwargs).extraction_peak_host_bytes == 900 << 20
    assert Cost.of(usage, **kwargs).extraction_peak_host_bytes is None


def test_a_source_too_small_to_hash_is_not_said_to_lack_a_pooled_layer():
    # A fine-tune-only run on 8 px digits has no feature store: the checks said 'Near-duplicates
    # were not checked: the store holds no 'pooled' layer.'
    text = " ".join(check_source(open_source("digits")).lines())
    assert "the store holds no" not in text
    assert "Near-duplicates were not checked" in text and "smaller than 32 px" in text
