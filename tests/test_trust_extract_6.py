"""Extraction and the Embedder under user mistakes and odd inputs (trust sweep 6)."""

from __future__ import annotations

import numpy as np
import pytest
import toy_backbone  # noqa: F401  (registers 'toy')
from PIL import Image

from featpipe.data.arrays import ArraySource
from featpipe.errors import ConfigError
from featpipe.extract import extract
from featpipe.extract.embedder import Embedder

FAST = dict(workers=0, device="cpu", progress=False, batch_size=4, dtype="float32")


def _rgba(n: int = 4) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 20, 20, 4), dtype=np.uint8)  # alpha anywhere in 0..255


def test_an_rgba_array_has_the_features_of_its_store_and_of_its_pil_image(tmp_path):
    # The Embedder dropped an array's alpha where a store (and a PIL image) composite it on
    # white: 0.07 apart on the toy model.
    images = _rgba()
    embedder = Embedder("toy", device="cpu", n_jobs=1).fit()
    from_arrays = embedder.transform(list(images))
    from_pil = embedder.transform([Image.fromarray(a) for a in images])
    store = extract(
        ArraySource(images, [0, 1, 0, 1]), "toy", ["pooled"], out=tmp_path / "s.h5", **FAST
    )
    assert np.array_equal(from_arrays, from_pil)
    assert np.array_equal(from_arrays, store.arrays("pooled")[0])


@pytest.mark.parametrize("shape", [(3, 20, 20), (20, 20, 2), (0, 20, 3)])
def test_an_array_of_another_shape_is_refused_naming_it(shape):
    embedder = Embedder("toy", device="cpu", n_jobs=1).fit()
    with pytest.raises(ConfigError, match=r"\(H, W, 1\|3\|4\), channels last") as err:
        embedder.transform([np.zeros(shape, np.uint8)])
    assert str(shape) in str(err.value)


def test_a_one_channel_array_is_read_as_grey():
    embedder = Embedder("toy", device="cpu", n_jobs=1).fit()
    grey = np.random.default_rng(1).integers(0, 256, (20, 20), dtype=np.uint8)
    assert np.array_equal(embedder.transform([grey[..., None]]), embedder.transform([grey]))
