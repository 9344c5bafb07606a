"""Data checks, round 12: faint pictures under the blank frames' spread, which hashed as
blank."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from test_trust_leakage_6 import _pattern
from test_trust_leakage_10 import _noisy_blank

from featpipe.data import ArraySource
from featpipe.evaluate.leakage import check_source, perceptual_hash


def _sketch(seed: int, size: int = 224) -> Image.Image:
    """A pale pencil sketch: six random gray-238 lines on gray-250 paper."""
    rng = np.random.default_rng(seed)
    image = Image.new("L", (size, size), 250)
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        draw.line([tuple(map(int, rng.integers(0, size, 2))) for _ in range(2)], 238, width=3)
    return image


def _spread(image: Image.Image) -> float:
    return np.asarray(image.resize((32, 32), Image.Resampling.LANCZOS), np.float64).std()


def test_two_pale_sketches_keep_their_own_hashes_and_are_not_flagged():
    # Before: a thumbnail spreading less than 2 gray levels hashed as blank, so two different
    # pale sketches were 0 bits apart, and a test sketch was reported as a near-duplicate of
    # a train one (and of any blank frame).
    sketches = [_sketch(0), _sketch(1)]
    assert all(_spread(s) < 2 for s in sketches)  # under the blank frames' spread
    assert bin(perceptual_hash(sketches[0]) ^ perceptual_hash(sketches[1])).count("1") > 8
    images = [sketches[0], _noisy_blank(0, 250, 2, 224), sketches[1], _noisy_blank(1, 250, 2, 224)]
    images += [_pattern(s, 224).convert("L") for s in (0, 1)]
    source = ArraySource(
        np.stack([np.asarray(im.convert("RGB")) for im in images]),
        [0, 1, 0, 1, 0, 1],
        splits=["train", "train", "test", "test", "train", "test"],
    )
    near = check_source(source).near_hash
    assert [(t, r) for t, r, _ in near] == [("arrays/000003", "arrays/000001")]


def test_noisy_blank_frames_still_hash_as_flat_frames():
    # The guard: a blank frame's noise is at noise level in the hash's terms, so it hashes
    # exactly as a flat frame of its gray, as before.
    for seed, gray, sigma, size in [
        (0, 12, 4, 64),
        (1, 12, 1, 64),
        (2, 90, 4, 300),
        (3, 250, 2, 224),
    ]:
        frame = _noisy_blank(seed, gray, sigma, size)
        flat = Image.new("L", frame.size, int(np.asarray(frame).mean()))
        assert perceptual_hash(frame) == perceptual_hash(flat)
