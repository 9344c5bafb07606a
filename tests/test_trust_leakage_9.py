"""Data checks, round 9: flat images' perceptual hash, and `featpipe check --source` given
another folder with the store's file names."""

from __future__ import annotations

import itertools
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import toy_backbone  # noqa: F401  (registers the 'toy' backbone)
from PIL import Image
from test_trust_leakage_6 import _pattern

from featpipe.cli import main
from featpipe.data.manifest import CSVSource
from featpipe.evaluate.leakage import check_data, perceptual_hash


def _bits(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


def test_flat_images_hash_alike_not_by_rounding_noise():
    # Before: a solid colour's DCT terms but the constant one were float rounding noise, so
    # its bits were arbitrary: 2 % of pairs of solid greys fell within 4 bits, and others
    # were up to 32 bits apart. Placeholder frames were near-duplicates, or not, by chance.
    hashes = [perceptual_hash(Image.new("L", (40, 40), g)) for g in range(0, 256, 5)]
    apart = [_bits(a, b) for a, b in itertools.combinations(hashes, 2)]
    assert max(apart) <= 1
    # Colour or size does not matter either (grayscale thumbnail, as for any image).
    assert _bits(perceptual_hash(Image.new("RGB", (300, 200), (200, 30, 60))), hashes[0]) <= 1
    # A left-right symmetric drawing: half its terms are absent, and were noise too.
    a = np.zeros((64, 64), np.uint8)
    a[16:48, 8:56], a[20:30, 20:44] = 200, 90
    small = Image.fromarray(a)
    assert perceptual_hash(small) == perceptual_hash(small.resize((96, 96), Image.NEAREST))


def test_healthy_images_keep_their_hash():
    # Terms of real images are far above the cut: their hashes are as before (the benchmark's
    # figures did not move). These values were taken before the change.
    rng = np.random.default_rng(0)
    got = [
        perceptual_hash(Image.fromarray(rng.integers(0, 256, (48, 48, 3), np.uint8)))
        for _ in range(3)
    ]
    assert got == [0xD47B0A4F75B49381, 0xF2AF2744FEA2C40C, 0xC15AA58B3DFB9806]
    assert perceptual_hash(_pattern(3)) != perceptual_hash(_pattern(4))


def test_a_blank_test_frame_is_flagged_next_to_a_blank_train_frame_of_another_gray():
    greys = {"train_blank": 37, "test_blank": 181}
    hashes = {i: perceptual_hash(Image.new("L", (32, 32), g)) for i, g in greys.items()}
    hashes["train_pattern"] = perceptual_hash(_pattern(1))
    ids = ["train_blank", "train_pattern", "test_blank"]
    checks = check_data(
        ids,
        np.array([0, 1, 0]),
        ["train", "train", "test"],
        ["a", "b"],
        hashes=["x", "y", "z"],
        image_hashes=hashes,
        min_per_class=1,
    )
    assert checks.near_hash == [["test_blank", "train_blank", 0]]


def _folder(root: Path, seeds: list[int]) -> Path:
    """Six PNGs and a manifest: 3 train, 3 test, two classes."""
    root.mkdir()
    rows = ["path,label,split"]
    for k, seed in enumerate(seeds):
        _pattern(seed).save(root / f"im{k}.png")
        rows.append(f"im{k}.png,{'ab'[k % 2]},{'train' if k < 3 else 'test'}")
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    return root / "m.csv"


@pytest.fixture()
def toy_store(tmp_path):
    from featpipe import extract

    csv = _folder(tmp_path / "a", [0, 1, 2, 3, 4, 5])
    store = extract(
        CSVSource(csv), "toy", ["pooled"], cache_dir=tmp_path, progress=False, device="cpu"
    )
    return str(store.path), csv


def _check(store: str, csv: Path) -> str:
    """The warnings of `featpipe check STORE --source CSV`, in one text."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(["check", store, "--source", str(csv), "--min-per-class", "1"])
    return " ".join(str(w.message) for w in caught)


def test_check_warns_when_the_source_holds_other_images_under_the_store_names(tmp_path, toy_store):
    # Before: only the ids were compared; another folder with the same file names was hashed
    # and its duplicates reported as the store's, without a word.
    store, csv = toy_store
    assert "not those" not in _check(store, csv)
    other = _folder(tmp_path / "b", [10, 11, 12, 13, 14, 15])
    err = _check(store, other)
    assert f"The files of {other} are not those {store} was extracted from" in err
    assert "sizes or modification times differ" in err


def test_check_says_nothing_when_only_the_rows_differ(tmp_path, toy_store):
    # The same files with other splits (as `featpipe run` carves val): the fingerprint
    # differs for that, not for the images, and the store's own splits are checked.
    store, csv = toy_store
    moved = tmp_path / "a" / "moved.csv"
    moved.write_text(csv.read_text().replace("im3.png,b,test", "im3.png,b,train"))
    assert "not those" not in _check(store, moved)
    # Copied with their times kept: the same images.
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "a", copy)
    assert "not those" not in _check(store, copy / "m.csv")
    os.utime(copy / "im0.png", (1, 1))
    assert "not those" in _check(store, copy / "m.csv")
