"""The Embedder refuses one channels-first image array (torch's layout) in one line."""

from __future__ import annotations

import numpy as np
import pytest

from featpipe import Embedder
from featpipe.errors import ConfigError


def test_the_embedder_refuses_one_channels_first_image_naming_the_transpose():
    """One (3, H, W) array, torch's layout, was read as 3 gray images of H x W: 3 rows of
    features came back without a word, none of them the image's."""
    emb = Embedder("toy", device="cpu", n_jobs=1)
    image = np.random.default_rng(1).integers(0, 255, (36, 40, 3), np.uint8)
    chw = image.transpose(2, 0, 1)
    for one in (chw, chw[:1], np.concatenate([chw, chw[:1]])):  # RGB, gray, RGBA
        with pytest.raises(ConfigError, match=r"image\.transpose\(1, 2, 0\)\[None\]") as err:
            emb.transform(one)
        assert str(one.shape) in str(err.value) and "\n" not in str(err.value)
    np.testing.assert_array_equal(
        emb.transform(chw.transpose(1, 2, 0)[None]), emb.transform([image])
    )
    gray = chw[..., None]  # 3 gray images, as (N, H, W, 1): still a batch
    assert emb.transform(gray).shape[0] == 3
