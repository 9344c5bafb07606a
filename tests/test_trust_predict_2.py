"""Embedder(dtype='float16'): features rounded as a float16 store holds them, so that a head
trained on such a store makes the store's predictions from images in Python too."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import random_images_store

from featpipe.errors import ConfigError
from featpipe.heads import Embedder


def test_embedder_float16_gives_a_float16_stores_rows_exactly(tmp_path) -> None:
    """Embedder features were float32 only: up to 6e-5 off a float16 store's rows, which a
    head trained on that store saw rounded (only the CLI's predict rounded them)."""
    images, store = random_images_store(tmp_path, "float16")
    stored = store.arrays("pooled")[0]
    cache = tmp_path / "cache"
    full = Embedder("toy", batch_size=4, device="cpu", cache_dir=cache).fit().transform(images)
    assert not np.array_equal(full, stored)  # what float32 features are: not the store's
    # the same cache serves float16: its float32 features are rounded on the way out
    for cache_dir in (None, cache):
        emb = Embedder("toy", batch_size=4, device="cpu", cache_dir=cache_dir, dtype="float16")
        out = emb.fit().transform(images)
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, stored)


@pytest.mark.parametrize("dtype", ["float64", "fp16", np.float16])
def test_embedder_refuses_a_dtype_no_store_holds_at_fit(dtype) -> None:
    emb = Embedder("toy", device="cpu", dtype=dtype)  # stored as given, checked at fit
    assert emb.get_params()["dtype"] is dtype
    with pytest.raises(ConfigError, match=r"dtype must be one of 'float16', 'float32'.*got"):
        emb.fit()
