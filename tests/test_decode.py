"""``decode="fast"``: JPEG DCT-scaled decoding, its parity with the exact decode, and its key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from featpipe.backbones.preprocessing import Preprocessing
from featpipe.data import ArraySource, ImageFolderSource, images
from featpipe.data.images import (
    DECODES,
    decode_rgb,
    draft_scale,
    load_resized,
    load_rgb,
    load_source_image,
)
from featpipe.errors import ImageReadError, UnknownNameError
from featpipe.extract import extract, get_data_path
from featpipe.extract.loop import compute_identity
from featpipe.finetune.data import image_loader

CPU = torch.device("cpu")


def photo_like(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """Smooth colour fields with some texture: random 24x18 colours upscaled bicubically,
    plus fine noise (what upscaled CIFAR and ordinary photos look like to a decoder)."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (18, 24, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize(size, Image.Resampling.BICUBIC), dtype=np.int16)
    noise = rng.integers(-6, 7, smooth.shape)
    return Image.fromarray(np.clip(smooth + noise, 0, 255).astype(np.uint8))


def chw_to_hwc(pixels: torch.Tensor) -> np.ndarray:
    return pixels.permute(1, 2, 0).numpy().astype(float)


@pytest.mark.parametrize("size", [(256, 192), (255, 191), (640, 480), (1000, 667), (333, 500)])
@pytest.mark.parametrize("short_side", [64, 110, 146])
def test_fast_decode_gives_the_resized_size_of_a_full_decode(tmp_path, size, short_side):
    root = folder(tmp_path / "img", size=size, n=2)
    source = ImageFolderSource(root)
    expected = Preprocessing(short_side, short_side).geometry().transforms[0]
    full = expected(torch.from_numpy(np.array(source.load(0))).permute(2, 0, 1))
    fast = load_resized(source, 0, short_side, "bilinear")
    if draft_scale(size, short_side) > 1:
        assert fast.shape == full.shape
    else:
        assert fast.shape[1:] == (size[1], size[0])  # unresized: the transform resizes it


def folder(root: Path, size=(256, 192), n=4, **save) -> Path:
    for i in range(n):
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        photo_like(size, seed=i).save(root / f"c{i % 2}" / f"{i}.jpg", quality=90, **save)
    return root


@pytest.mark.parametrize("size, min_size", [((256, 192), 64), ((640, 427), 146), ((90, 90), 40)])
def test_draft_scale_is_pillows_rule(tmp_path, size, min_size):
    path = tmp_path / "a.jpg"
    photo_like(size).save(path, quality=90)
    scale = draft_scale(size, min_size)
    img = load_rgb(path, min_size=min_size)
    assert img.size == tuple((s + scale - 1) // scale for s in size)
    assert min(img.size) >= min_size


@pytest.mark.parametrize("progressive", [False, True])
def test_fast_decode_stays_close_to_exact_after_resize(tmp_path, progressive):
    root = folder(tmp_path / "img", progressive=progressive)
    source = ImageFolderSource(root)
    pre = Preprocessing(resize=64, crop=56, interpolation="bicubic")
    geometry = pre.geometry()
    for i in range(len(source)):
        exact = np.asarray(geometry(source.load(i)), dtype=float)
        fast = load_resized(source, i, pre.resize, pre.interpolation)
        assert min(fast.shape[1:]) == pre.resize  # already resized: geometry only crops
        diff = np.abs(chw_to_hwc(geometry(fast)) - exact)
        # measured: mean 1.1-1.2, max 8-9 levels on these noisy images (benchmarks/README.md
        # has the figures on photos)
        assert diff.mean() < 1.5 and diff.max() <= 12, (diff.mean(), diff.max())


def test_fast_decode_resizes_the_area_a_full_decode_covers(tmp_path):
    """An odd-sized JPEG halves to ceil(W / 2) pixels that cover W / 2 of the original's:
    resizing them as if they covered the whole image shifts and stretches the result."""
    root = folder(tmp_path / "img", size=(255, 191), n=2)
    source = ImageFolderSource(root)
    pre = Preprocessing(resize=64, crop=64, interpolation="bicubic")
    geometry = pre.geometry()
    for i in range(len(source)):
        exact = np.asarray(geometry(source.load(i)), dtype=float)
        boxed = chw_to_hwc(geometry(load_resized(source, i, 64, "bicubic")))
        naive = np.asarray(geometry(load_rgb(source.path(i), min_size=64)), dtype=float)
        assert np.abs(boxed - exact).mean() < 0.8 * np.abs(naive - exact).mean()


def test_fast_decode_is_exact_where_it_cannot_shrink(tmp_path):
    root = folder(tmp_path / "img", size=(100, 80))  # 80 // 64 = 1: no scaling
    source = ImageFolderSource(root)
    for i in range(len(source)):
        exact = np.asarray(source.load(i))
        assert np.array_equal(chw_to_hwc(load_resized(source, i, 64, "bilinear")), exact)
        assert np.array_equal(np.asarray(load_source_image(source, i, 64)), exact)
    arrays = ArraySource(np.zeros((2, 300, 300, 3), np.uint8), np.array([0, 1]))
    assert load_resized(arrays, 0, 64, "bilinear").shape == (3, 300, 300)  # in memory: as is


def test_decode_choice_is_in_the_store_key_and_exact_keeps_todays(tmp_path):
    assert compute_identity(CPU, "cpu") == compute_identity(CPU, "cpu", "exact")
    assert compute_identity(CPU, "cpu", "fast") == {"precision": "fp32", "decode": "pil-fast"}
    # the gpu path decodes at full size whatever decode says
    assert get_data_path("gpu", Preprocessing(64, 56), CPU, "fast").decode == "exact"
    root = folder(tmp_path / "img", n=6)
    options = dict(cache_dir=tmp_path / "cache", batch_size=4, workers=0, progress=False)
    exact = extract(ImageFolderSource(root), "toy", ["pooled"], **options)
    fast = extract(ImageFolderSource(root), "toy", ["pooled"], decode="fast", **options)
    assert exact.path != fast.path and exact.key != fast.key
    assert fast.attrs["compute"]["decode"] == "pil-fast"
    a, _ = exact.arrays("pooled")
    b, _ = fast.arrays("pooled")
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.99
    with pytest.raises(UnknownNameError, match="Valid: exact, fast"):
        extract(ImageFolderSource(root), "toy", ["pooled"], decode="quick", **options)


def test_fine_tuning_loader_covers_the_smallest_random_crop(tmp_path):
    root = folder(tmp_path / "img", size=(640, 480), n=2)
    source = ImageFolderSource(root)
    pre = Preprocessing(resize=64, crop=56)
    assert image_loader(pre, "exact")(source, 0).size == (640, 480)
    train = image_loader(pre, "fast", "standard")(source, 0)
    # a crop of 1/4 of the area at 3:4 has a side of 0.43 of the short side: >= 56 px
    assert min(train.size) * np.sqrt(0.25 * 3 / 4) >= 56
    assert train.size == (320, 240)
    assert min(image_loader(pre, "fast")(source, 0).shape[1:]) == 64
    assert DECODES == ("exact", "fast")


def test_pipelines_take_features_decode_and_hash_it_only_when_fast():
    from featpipe.errors import ConfigError
    from featpipe.pipeline.config import config_from_dict
    from featpipe.pipeline.runner import plan

    raw = {
        "source": {"data": "digits"},
        "features": {"backbones": ["toy"]},
        "probes": {"heads": ["logreg"]},
        "finetune": {"modes": ["head"]},
    }
    exact = config_from_dict(raw)
    assert exact.features.decode == "exact"
    fast = config_from_dict(raw, ["features.decode=fast"])
    hashes = {m.config_hash for m in plan(exact, "fp")}
    # exact keeps the hashes runs had before the option existed; fast redoes every method
    assert not hashes & {m.config_hash for m in plan(fast, "fp")}
    with pytest.raises(ConfigError, match="decode"):
        config_from_dict(raw, ["features.decode=quick"])


# (size, Pillow's save options): every subsampling, progressive, grey, RGB kept as RGB, and
# sizes that decode at 1/8, 1/4, 1/2 and full scale for a 64-pixel short side
TURBO_CASES = [
    ((640, 520), {}),
    ((333, 275), {"progressive": True}),
    ((255, 191), {"subsampling": 0}),
    ((201, 150), {"subsampling": 1}),
    ((101, 77), {}),
    ((300, 220), {"mode": "L"}),
    ((300, 220), {"keep_rgb": True}),
]


@pytest.mark.parametrize("size, save", TURBO_CASES)
def test_fast_decode_through_simplejpeg_gives_pillows_pixels(tmp_path, size, save):
    pytest.importorskip("simplejpeg")
    mode = save.pop("mode", "RGB")
    for name in ("c0", "c1"):  # a folder source needs two classes
        (tmp_path / name).mkdir()
        photo_like(size).convert(mode).save(tmp_path / name / "a.jpg", quality=90, **save)
    source, path = ImageFolderSource(tmp_path), tmp_path / "c0" / "a.jpg"
    assert images._turbo_decode(path, 64) is not None  # libjpeg-turbo took it
    assert images._turbo_decode(path) is not None
    turbo = load_resized(source, 0, 64, "bicubic")
    full, data = np.asarray(source.load(0)), path.read_bytes()  # the exact decode
    with images.pillow_only():
        assert images._turbo_decode(path, 64) is None
        assert torch.equal(turbo, load_resized(source, 0, 64, "bicubic"))
        assert np.array_equal(full, np.asarray(source.load(0)))
        assert np.array_equal(full, np.asarray(decode_rgb(data, "a.jpg")))
    assert images._turbo_decode(path, 64) is not None  # back after the block
    assert np.array_equal(full, np.asarray(decode_rgb(data, "a.jpg")))


def test_fast_decode_leaves_to_pillow_what_simplejpeg_does_not_take(tmp_path, monkeypatch):
    pytest.importorskip("simplejpeg")
    c0, c1 = tmp_path / "img" / "c0", tmp_path / "img" / "c1"
    c0.mkdir(parents=True)
    c1.mkdir()
    photo_like((200, 150)).convert("CMYK").save(c0 / "cmyk.jpg", quality=90)
    photo_like((200, 150)).save(c0 / "png.jpg", format="PNG")  # a PNG named .jpg
    photo_like((200, 150)).save(c1 / "ok.jpg", quality=90)
    data = (c1 / "ok.jpg").read_bytes()
    (c1 / "truncated.jpg").write_bytes(data[: len(data) // 2])
    source = ImageFolderSource(tmp_path / "img")
    names = [Path(source.path(i)).name for i in range(len(source))]
    files = {name: source.path(i) for i, name in enumerate(names)}

    def decode_all() -> dict:
        out = {}
        for i, name in enumerate(names):
            try:  # both decodes: fast, exact
                fast = load_resized(source, i, 64, "bilinear").flatten()
                out[name] = torch.cat([fast, torch.from_numpy(np.array(source.load(i))).flatten()])
            except ImageReadError as err:
                out[name] = str(err)
        return out

    for name in ("cmyk.jpg", "png.jpg", "truncated.jpg"):
        assert images._turbo_decode(files[name], 64) is None, name
    turbo = decode_all()
    assert "truncated file" in turbo["truncated.jpg"]
    with images.pillow_only():
        pillow = decode_all()
    for name in names:
        same = turbo[name] == pillow[name]
        assert same if isinstance(same, bool) else torch.equal(turbo[name], pillow[name]), name
    # over Pillow's pixel limit: Pillow's error, not a decode
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100)
    assert images._turbo_decode(files["ok.jpg"], 64) is None
    with pytest.raises(ImageReadError, match="image too large"):
        load_resized(source, names.index("ok.jpg"), 64, "bilinear")


def test_decode_help_names_the_jpeg_decoder_and_provenance_its_version():
    import argparse

    from featpipe.cli.options import add_decode_option
    from featpipe.provenance import versions

    def help_text() -> str:
        parser = argparse.ArgumentParser()
        add_decode_option(parser)
        return " ".join(parser.format_help().split())

    with images.pillow_only():
        assert 'JPEGs decode with pillow (pip install "featpipe[jpeg]"' in help_text()
    assert f"JPEGs decode with {images.jpeg_decoder()}" in help_text()
    assert "pillow" in versions()


def test_fast_decode_scales_a_multi_picture_jpeg_as_a_jpeg(tmp_path):
    """MPO (a camera's JPEG with a second picture): Pillow once decoded it in full under
    ``fast`` while libjpeg-turbo scaled it, so the two decoders gave different pixels."""
    for name in ("c0", "c1"):
        (tmp_path / name).mkdir()
        photo_like((640, 480)).save(
            tmp_path / name / "a.jpg",
            format="MPO",
            save_all=True,
            append_images=[photo_like((640, 480), seed=1)],
            quality=90,
        )
    source, path = ImageFolderSource(tmp_path), tmp_path / "c0" / "a.jpg"
    with Image.open(path) as img:
        assert img.format == "MPO"
    with images.pillow_only():
        assert load_rgb(path, min_size=64).size == (160, 120)  # 1/4 scale, as a JPEG
        pillow = load_resized(source, 0, 64, "bilinear"), np.asarray(source.load(0))
    if images.jpeg_decoder() != "pillow":
        assert torch.equal(load_resized(source, 0, 64, "bilinear"), pillow[0])
        assert np.array_equal(np.asarray(source.load(0)), pillow[1])
