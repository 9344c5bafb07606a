"""The perceptual-hash check leaves out images too small for a hash to tell a copy from a
look-alike: on the demo's 8 px digits it flagged 22 of 359 test images, each a different
writer's digit (pixels 44 to 80 apart in L1, as far as typical nearest neighbours)."""

from __future__ import annotations

from featpipe.data import open_source
from featpipe.evaluate.leakage import check_source, source_hashes


def test_digits_are_too_small_to_hash_and_are_not_called_near_duplicates():
    digits = open_source("digits", val_fraction=0.2, test_fraction=0.2, seed=0)
    content, perceptual = source_hashes(digits)
    assert len(content) == len(digits.ids) and perceptual == {}
    checks = check_source(digits)
    assert checks.near_hash == [] and checks.hash_bits is None
    text = " ".join(checks.lines())
    assert "perceptual hash within" not in text
