"""Extraction and the Embedder under user mistakes and odd inputs (trust sweep 6)."""

from __future__ import annotations

import threading

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


def _palette_image(palette: list[int], transparency: int | None = None) -> Image.Image:
    indices = np.random.default_rng(0).integers(0, 4, (20, 20), dtype=np.uint8)
    image = Image.fromarray(indices, "P")
    image.putpalette(palette)
    if transparency is not None:
        image.info["transparency"] = transparency
    return image


def test_the_cache_tells_palette_images_apart_by_their_colours(tmp_path):
    # A palette image's bytes are its indices: two images with one set of indices and other
    # palettes (or a transparency key) were one cache entry, and got the first's features.
    colours = [0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255]
    images = [
        _palette_image(colours),
        _palette_image([255 - c for c in colours]),
        _palette_image(colours, transparency=1),
    ]
    cached = Embedder("toy", device="cpu", n_jobs=1, cache_dir=tmp_path / "cache").fit()
    plain = Embedder("toy", device="cpu", n_jobs=1).fit()
    # one image at a time, as the cache computes them: a batch of 3 differs by ~1e-8 on some CPUs
    expected = [plain.transform([image])[0] for image in images]
    assert not np.array_equal(expected[0], expected[1])
    assert not np.array_equal(expected[0], expected[2])
    for image, features in zip(images, expected, strict=True):
        assert np.array_equal(cached.transform([image])[0], features)


def test_two_jobs_caching_one_image_at_once_both_succeed(tmp_path, monkeypatch):
    # GridSearchCV's jobs share one cache: a job saved its feature to a temporary file whose
    # name every job used, and moved it into place; another job moving that file first made
    # the move fail with FileNotFoundError. Here the other job runs between the two steps.
    from featpipe.extract import embedder as embedder_module

    image = np.random.default_rng(2).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    cache = tmp_path / "cache"
    save, others, started = np.save, [], []

    def save_then_let_another_job_cache_it(file, array, *args, **kwargs):
        save(file, array, *args, **kwargs)
        if not started:
            started.append(True)
            other = Embedder("toy", device="cpu", n_jobs=1, cache_dir=cache).fit()
            job = threading.Thread(target=lambda: others.append(other.transform([image])))
            job.start()
            job.join()

    monkeypatch.setattr(embedder_module.np, "save", save_then_let_another_job_cache_it)
    features = Embedder("toy", device="cpu", n_jobs=1, cache_dir=cache).fit().transform([image])
    assert np.array_equal(features, others[0])
    assert sorted(p.suffix for p in next(cache.iterdir()).iterdir()) == [".json", ".npy"]
