"""Near-duplicates by perceptual hash: a resized, recompressed or grayscale copy of a train
image in test had a feature cosine below 0.99 (0.41-0.98 on CIFAR-10) and the report said "No
test image has a near-duplicate". Each test failed before the perceptual hash was added."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from featpipe.cli import main
from featpipe.data.manifest import CSVSource
from featpipe.evaluate import leakage
from featpipe.evaluate.leakage import DataChecks, check_data, check_source


def _pattern(seed: int, size: int = 48) -> Image.Image:
    """A smooth random colour pattern (not saturated: brightening does not clip it) with a
    bright bar: distinct per seed."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(20, 200, (5, 5, 3), dtype=np.uint8))
    a = np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC)).copy()
    a[rng.integers(0, size - 8) :][:6] = 210
    return Image.fromarray(a)


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


COPIES = {
    "jpeg50": lambda im: _jpeg(im, 50),
    "resized": lambda im: im.resize((36, 36), Image.Resampling.BICUBIC).resize((48, 48)),
    "gray": lambda im: im.convert("L").convert("RGB"),
    "brighter": lambda im: ImageEnhance.Brightness(im).enhance(1.1),
}


def _source(root: Path) -> CSVSource:
    """Train: 8 distinct patterns; val: 2 more; test: a copy of train 0 per edit, and 6 new
    patterns."""
    rows = ["path,label,split"]

    def add(image: Image.Image, name: str, split: str) -> None:
        image.save(root / f"{name}.png")
        rows.append(f"{name}.png,{'ab'[len(rows) % 2]},{split}")

    for i in range(8):
        add(_pattern(i), f"train{i}", "train")
    for i in range(8, 10):
        add(_pattern(i), f"val{i}", "val")
    for name, edit in COPIES.items():
        add(edit(_pattern(0)), name, "test")
    for i in range(10, 16):
        add(_pattern(i), f"new{i}", "test")
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    return CSVSource(root / "m.csv")


def test_resized_recompressed_and_grayscale_copies_are_near_duplicates(tmp_path):
    checks = check_source(_source(tmp_path))
    assert checks.near_test == {f"{name}.png" for name in COPIES}
    assert {r for _, r, _ in checks.near_hash} == {"train0.png"}
    assert all(bits <= leakage.NEAR_BITS for _, _, bits in checks.near_hash)
    text = " ".join(checks.lines())
    assert f"4 of the 10 test images have a near-duplicate in train or val (perceptual " \
        f"hash within {leakage.NEAR_BITS} bits)" in text  # fmt: skip


def test_distinct_images_are_not_near_duplicates():
    images = [_pattern(i) for i in range(40)]
    hashes = {str(i): leakage.perceptual_hash(im) for i, im in enumerate(images)}
    splits = ["train"] * 20 + ["test"] * 20
    checks = check_data(list(hashes), np.zeros(40, int), splits, ["x"], image_hashes=hashes)
    assert checks.near_hash == [] and checks.hash_bits == leakage.NEAR_BITS
    assert "No test image has a near-duplicate in train or val (perceptual hash" in " ".join(
        checks.lines()
    )


def test_the_comparison_in_small_blocks_finds_the_same(monkeypatch):
    rng = np.random.default_rng(1)
    values = [int(v) for v in rng.integers(0, 2**63, 30, dtype=np.int64)]
    values[25] = values[3] ^ 0b101  # 2 bits from train 3
    values[29] = values[7] ^ (1 << 63)  # 1 bit from train 7, the top bit
    hashes = {str(i): v for i, v in enumerate(values)}
    splits = ["train"] * 20 + ["test"] * 10
    whole = leakage._near_hashes(hashes, np.array(splits), list(hashes), 4)
    monkeypatch.setattr(leakage, "_SIMILARITIES", 6)  # 3 reference hashes at a time
    monkeypatch.setattr(leakage, "_BLOCK", 4)
    assert leakage._near_hashes(hashes, np.array(splits), list(hashes), 4) == whole
    assert whole == [["29", "7", 1], ["25", "3", 2]]


def test_old_checks_json_reads_and_says_what_the_cosine_misses():
    old = {
        "basis": "by identical stored features; ...",
        "duplicates": [],
        "near": [],
        "near_layer": "pooled",
        "small_classes": {},
        "test_ids": ["t"],
        "near_reference": ["train", "val"],
    }
    checks = DataChecks.from_json(old)
    assert checks.hash_bits is None and checks.near_hash == []
    text = " ".join(checks.lines())
    assert "(cosine ≥ 0.99 on the stored pooled features); this misses most resized" in text


@pytest.mark.parametrize("bits", ["-1", "64"])
def test_a_hash_threshold_outside_0_63_is_refused(tmp_path, capsys, bits):
    store = tmp_path / "s.h5"
    store.write_bytes(b"not read: the options are checked first")
    assert main(["check", str(store), "--hash-bits", bits]) == 2
    assert f"--hash-bits {bits}" in capsys.readouterr().err


def test_featpipe_check_with_the_source_names_each_test(tmp_path, capsys):
    from featpipe import extract

    source = _source(tmp_path)
    store = extract(source, "toy", ["pooled"], cache_dir=tmp_path, progress=False, device="cpu")
    assert main(["check", str(store.path), "--source", str(tmp_path / "m.csv")]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "near-duplicate in train or val (perceptual hash within 4 bits)" in out
    assert "on the stored pooled features" in out
