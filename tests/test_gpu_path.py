"""The GPU data path, run with CPU tensors: batching, fallbacks, and agreement with the CPU path."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CIFAR_ARCHIVE
from PIL import Image

from featpipe.backbones.preprocessing import Preprocessing
from featpipe.data import ArraySource, ImageFolderSource
from featpipe.errors import ImageReadError
from featpipe.extract.gpu_path import (
    CPU_DEVICE_MAX_LEVELS,
    FEATURE_MIN_COSINE,
    FLOAT_RESIZE_MAX_LEVELS,
    NVJPEG_MEAN_LEVELS,
    Batch,
    GPUDataPath,
    Sample,
    is_jpeg,
)
from featpipe.extract.tensor_ops import normalise, resize_crop

CPU = torch.device("cpu")
SMALL = [
    Preprocessing(resize=40, crop=32, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3),
    Preprocessing(resize=36, crop=32, interpolation="bilinear"),
]
# (width, height): landscape, portrait, square, smaller than the crop, two of the same size
SIZES = [(60, 45), (45, 60), (50, 50), (20, 16), (60, 45)]


def _photo(width: int, height: int, seed: int) -> Image.Image:
    """A smooth image with sharp edges, like a photo (pure noise would hide resize errors)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) % 64 * 4], axis=-1)
    base[height // 3 : height // 2, width // 4 : width // 2] = rng.integers(0, 255, 3)
    return Image.fromarray(base.astype(np.uint8))


def _folder(root: Path, sizes=SIZES, fmt: dict[int, str] | None = None) -> ImageFolderSource:
    """root/a/NN.<ext>; ``fmt`` maps an image's position to 'png' (default 'jpg')."""
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    for i, (w, h) in enumerate(sizes):
        ext = (fmt or {}).get(i, "jpg")
        _photo(w, h, i).save(root / "a" / f"{i:02d}.{ext}", quality=90)
    _photo(30, 30, 99).save(root / "b" / "99.jpg", quality=90)  # a second class
    return ImageFolderSource(root)


def _cpu_path(source, pre: Preprocessing) -> torch.Tensor:
    transform = pre.transform()
    return torch.stack([transform(source.load(i)) for i in range(len(source))])


def _gpu_path(source, pre: Preprocessing) -> tuple[torch.Tensor, Batch]:
    path = GPUDataPath(pre, CPU)
    batch = path.collate([path.load(source, i) for i in range(len(source))])
    return path.to_batch(batch, CPU), batch


def _from_bytes(files: list[bytes], pre: Preprocessing, device: torch.device) -> torch.Tensor:
    path = GPUDataPath(pre, device)
    batch = path.collate([Sample(data, f"#{i}") for i, data in enumerate(files)])
    return path.to_batch(batch, device)


def _levels(a: torch.Tensor, b: torch.Tensor, pre: Preprocessing) -> torch.Tensor:
    """|a - b| of normalised batches in uint8 grey levels."""
    return (a - b).abs() * torch.tensor(pre.std).view(1, 3, 1, 1) * 255


def test_is_jpeg():
    assert is_jpeg(b"\xff\xd8\xff\xe0rest")
    assert not is_jpeg(b"\x89PNG\r\n\x1a\n")
    assert not is_jpeg(b"")


@pytest.mark.parametrize("pre", SMALL, ids=["bicubic", "bilinear"])
def test_jpegs_of_different_sizes_match_the_cpu_path(tmp_path, pre):
    source = _folder(tmp_path)
    expected = _cpu_path(source, pre)
    out, batch = _gpu_path(source, pre)
    # workers ship the files' bytes untouched, end to end; decoding happens in to_batch
    assert batch.jpeg_rows == list(range(len(source)))
    assert batch.pixel_rows == []
    files = [Path(source.path(i)).read_bytes() for i in range(len(source))]
    assert bytes(batch.jpegs.numpy()) == b"".join(files)
    assert batch.jpeg_sizes == [len(f) for f in files]
    assert out.shape == (len(source), 3, pre.crop, pre.crop)
    assert out.dtype == torch.float32
    assert _levels(out, expected, pre).max() <= CPU_DEVICE_MAX_LEVELS + 1e-3


def test_png_falls_back_to_worker_decoding(tmp_path):
    pre = SMALL[0]
    source = _folder(tmp_path, fmt={1: "png", 3: "png"})
    out, batch = _gpu_path(source, pre)
    # PNGs arrive as cropped pixels, JPEGs as bytes
    assert batch.pixel_rows == [1, 3]
    assert batch.jpeg_rows == [0, 2, 4, 5]
    assert batch.pixels.shape == (2, 3, pre.crop, pre.crop)
    assert batch.pixels.dtype == torch.uint8
    assert _levels(out, _cpu_path(source, pre), pre).max() <= CPU_DEVICE_MAX_LEVELS + 1e-3


def test_in_memory_images_fall_back_to_worker_decoding():
    pre = SMALL[1]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 48, 40, 3), dtype=np.uint8)
    source = ArraySource(images, [0, 1, 0, 1])
    out, batch = _gpu_path(source, pre)
    assert batch.pixel_rows == [0, 1, 2, 3]
    assert batch.jpegs.numel() == 0
    assert batch.names[2] == source.ids[2]
    assert _levels(out, _cpu_path(source, pre), pre).max() <= CPU_DEVICE_MAX_LEVELS + 1e-3


def test_corrupt_jpeg_raises_naming_the_file(tmp_path):
    source = _folder(tmp_path)
    bad = Path(source.path(2))
    bad.write_bytes(bad.read_bytes()[:40] + b"\x00" * 50)  # JPEG magic, garbage after it
    path = GPUDataPath(SMALL[0], CPU)
    with pytest.raises(ImageReadError, match=rf"{bad.name}': not an image"):
        path.load(source, 2)  # the worker's header check
    truncated = Path(source.path(3))
    data = truncated.read_bytes()
    truncated.write_bytes(data[: data.index(b"\xff\xda") + 20])  # a whole header, no pixels
    # no end-of-image marker: nvJPEG could decode garbage, so the worker decodes it (and fails)
    with pytest.raises(ImageReadError, match=rf"{truncated.name}': truncated file"):
        path.load(source, 3)
    bogus = Path(source.path(4))
    data = bytearray(bogus.read_bytes())
    data[data.index(b"\xff\xc0") + 11] = 0  # sampling factors 0: fails only when decoded
    bogus.write_bytes(bytes(data))
    batch = path.collate([path.load(source, i) for i in range(len(source)) if i not in (2, 3)])
    with pytest.raises(ImageReadError, match=rf"{bogus.name}': cannot decode"):
        path.to_batch(batch, CPU)
    failed = {}
    out = path.to_batch(batch, CPU, failed)  # recorded instead, the row left blank
    assert list(failed) == [2] and "cannot decode" in failed[2].reason
    assert out.shape[0] == len(source) - 2


def test_cmyk_and_grey_jpegs_match_the_cpu_path(tmp_path):
    pre = SMALL[0]
    source = _folder(tmp_path, sizes=[(40, 36), (36, 40)])
    for i, mode in enumerate(["CMYK", "L"]):
        file = Path(source.path(i))
        Image.open(file).convert(mode).save(file, quality=90)
    out, _ = _gpu_path(source, pre)
    assert _levels(out, _cpu_path(source, pre), pre).max() <= CPU_DEVICE_MAX_LEVELS + 1e-3


def test_float_resize_used_on_cuda_stays_within_its_tolerance(tmp_path):
    """The float32 resize that runs on CUDA, run on CPU against the uint8 kernels."""
    source = _folder(tmp_path)
    for pre in SMALL:
        images = [
            torch.from_numpy(np.asarray(source.load(i)).copy()).permute(2, 0, 1)
            for i in range(len(source))
        ]
        exact = normalise(resize_crop(images, pre, via_float=False), pre)
        emulated = normalise(resize_crop(images, pre, via_float=True), pre)
        assert torch.equal(exact, _cpu_path(source, pre))
        assert _levels(emulated, exact, pre).max() <= FLOAT_RESIZE_MAX_LEVELS + 1e-3


def test_resize_crop_keeps_input_order_and_rejects_nothing_to_do():
    pre = SMALL[1]
    images = [torch.full((3, 30 + i, 40), 10 * i, dtype=torch.uint8) for i in range(4)]
    out = resize_crop(images, pre)
    assert out.shape == (4, 3, pre.crop, pre.crop)
    assert [int(out[i, 0, 0, 0]) for i in range(4)] == [0, 10, 20, 30]
    with pytest.raises(ValueError, match="at least one image"):
        resize_crop([], pre)


def test_normalise_matches_the_cpu_path_and_keeps_channels_last():
    pre = SMALL[1]
    pixels = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    out = normalise(pixels.contiguous(memory_format=torch.channels_last), pre)
    assert out.is_contiguous(memory_format=torch.channels_last)
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.std).view(1, 3, 1, 1)
    torch.testing.assert_close(out, (pixels / 255 - mean) / std)


def _sample_photos() -> list[Path]:
    import sklearn

    folder = Path(sklearn.__file__).parent / "datasets" / "images"
    return [folder / "china.jpg", folder / "flower.jpg"]


def _upscaled_cifar(n: int) -> list[bytes]:
    """The archive's first ``n`` CIFAR-10 JPEGs upscaled to 500x375, as JPEG bytes."""
    if not CIFAR_ARCHIVE.exists():
        pytest.skip(f"{CIFAR_ARCHIVE} is not on this machine")
    out = []
    with tarfile.open(CIFAR_ARCHIVE) as tar:  # streamed: stops after n members
        for member in tar:
            if member.isfile() and member.name.endswith(".jpg"):
                small = Image.open(tar.extractfile(member)).convert("RGB")
                big = small.resize((500, 375), Image.Resampling.BICUBIC)
                buf = io.BytesIO()
                big.save(buf, "JPEG", quality=90)
                out.append(buf.getvalue())
                if len(out) == n:
                    break
    return out


@pytest.mark.slow
def test_real_photos_give_the_cpu_path_features():
    """china.jpg, flower.jpg and upscaled CIFAR-10 through efficientnet_lite0: the GPU path on
    CPU is exact; the float resize CUDA uses keeps the features and top-1 classes."""
    from featpipe.backbones import get_backbone

    backbone = get_backbone("efficientnet_lite0")
    pre = backbone.preprocessing
    raw = [f.read_bytes() for f in _sample_photos()] + _upscaled_cifar(4)
    pil = [Image.open(io.BytesIO(r)).convert("RGB") for r in raw]
    reference = torch.stack([pre.transform()(img) for img in pil])
    on_cpu = _from_bytes(raw, pre, CPU)
    assert _levels(on_cpu, reference, pre).max() <= CPU_DEVICE_MAX_LEVELS + 1e-3

    pixels = [torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1) for img in pil]
    emulated = normalise(resize_crop(pixels, pre, via_float=True), pre)
    assert _levels(emulated, reference, pre).max() <= FLOAT_RESIZE_MAX_LEVELS + 1e-3
    model = backbone.features(["pooled", "logits"])
    with torch.inference_mode():
        a, b = model(reference), model(emulated)
    cosine = torch.nn.functional.cosine_similarity(a["pooled"], b["pooled"])
    assert cosine.min() >= FEATURE_MIN_COSINE
    assert a["logits"][:2].argmax(1).tolist() == [698, 985]  # palace, daisy
    assert b["logits"][:2].argmax(1).tolist() == [698, 985]


def test_extract_with_the_gpu_data_path_on_cpu(image_folder, tmp_path):
    from featpipe.extract import extract

    source = ImageFolderSource(image_folder)
    options = dict(backbone="toy", device="cpu", workers=0, progress=False, batch_size=8)
    cpu = extract(source, data_path="cpu", cache_dir=tmp_path / "cpu", **options)
    gpu = extract(source, data_path="gpu", cache_dir=tmp_path / "gpu", **options)
    assert gpu.extraction["data_path"] == "gpu"
    x_cpu, y_cpu = cpu.arrays("pooled")
    x_gpu, y_gpu = gpu.arrays("pooled")
    np.testing.assert_array_equal(y_cpu, y_gpu)
    np.testing.assert_allclose(x_gpu, x_cpu, rtol=1e-3, atol=1e-3)  # float16 store


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@needs_cuda
def test_cuda_decoding_matches_the_cpu_path(tmp_path):
    pre = SMALL[0]
    device = torch.device("cuda")
    source = _folder(tmp_path, fmt={1: "png"})
    path = GPUDataPath(pre, device)
    items = path.collate([path.load(source, i) for i in range(len(source))])
    out = path.to_batch(items, device)
    assert out.device.type == "cuda"
    assert out.is_contiguous(memory_format=torch.channels_last)
    levels = _levels(out.cpu(), _cpu_path(source, pre), pre)
    assert levels.mean() <= NVJPEG_MEAN_LEVELS


@pytest.mark.gpu
@needs_cuda
def test_cuda_real_photos_keep_their_top1():
    from featpipe.backbones import get_backbone

    device = torch.device("cuda")
    backbone = get_backbone("efficientnet_lite0")
    pre = backbone.preprocessing
    raw = [f.read_bytes() for f in _sample_photos()]
    out = _from_bytes(raw, pre, device).cpu()
    reference = torch.stack(
        [pre.transform()(Image.open(io.BytesIO(r)).convert("RGB")) for r in raw]
    )
    assert _levels(out, reference, pre).mean() <= NVJPEG_MEAN_LEVELS
    model = backbone.features(["pooled", "logits"])
    with torch.inference_mode():
        a, b = model(reference), model(out)
    assert torch.nn.functional.cosine_similarity(a["pooled"], b["pooled"]).min() >= 0.99
    assert b["logits"].argmax(1).tolist() == [698, 985]
