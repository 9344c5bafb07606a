"""Fine-tune trust checks, session 15: a val fraction that carves no row is refused with the
same least fraction that the source's own split warns with."""

from __future__ import annotations

import numpy as np
import pytest
from test_finetune import tuner

from featpipe.data import ArraySource
from featpipe.errors import ConfigError


def test_a_val_fraction_that_carves_nothing_is_refused_with_the_least_that_works():
    # Before: the fine-tune asked for ceil(100/n)/100 (0.12 of 9 rows), twice what carves a
    # row, while the source's split (data.splits) warned with 0.06 for the same rows.
    images = np.random.default_rng(0).integers(0, 255, (12, 8, 8, 3), dtype=np.uint8)
    small = ArraySource(images, np.arange(12) % 3, splits=["train"] * 9 + ["test"] * 3)
    said = r"val_fraction=0.05 of its 9 train rows carves no val row \(9 x 0.05 rounds to 0\)"
    with pytest.raises(ConfigError, match=said + r"\. Use a val_fraction of at least 0.06,"):
        tuner(epochs=0, batch_size=4, val_fraction=0.05).fit(small)
    assert len(tuner(epochs=0, batch_size=4, val_fraction=0.06).fit(small).val_rows_) == 1
