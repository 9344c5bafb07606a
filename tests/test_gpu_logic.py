"""The GPU paths' host-side logic, tested on CPU: which JPEGs nvJPEG gets, batches placed by
device index tensors, padded batches for torch.compile, uint8 shipping on the CPU data path."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from featpipe.backbones import get_backbone
from featpipe.backbones.preprocessing import Preprocessing
from featpipe.data import ImageFolderSource
from featpipe.extract.datapath import CPUDataPath
from featpipe.extract.fixed_batch import FixedBatch, pad_rows
from featpipe.extract.gpu_path import GPUDataPath
from featpipe.extract.jpeg_header import nvjpeg_safe, read_header
from featpipe.extract.tensor_ops import place_rows, resize_crop

CPU = torch.device("cpu")
PRE = Preprocessing(resize=40, crop=32, interpolation="bicubic")


def _jpeg(mode: str = "RGB", size=(48, 40), **options) -> bytes:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(out, "JPEG", quality=90, **options)
    return out.getvalue()


def test_header_of_baseline_grey_progressive_and_cmyk_files():
    baseline = read_header(_jpeg())
    assert (baseline.sof, baseline.precision, baseline.components) == (0xC0, 8, 3)
    assert baseline.complete and nvjpeg_safe(_jpeg())
    assert read_header(_jpeg("L")).components == 1 and nvjpeg_safe(_jpeg("L"))
    progressive = _jpeg(progressive=True)
    assert read_header(progressive).sof == 0xC2 and not nvjpeg_safe(progressive)
    cmyk = _jpeg("CMYK")
    header = read_header(cmyk)
    assert header.components == 4 and header.adobe_transform is not None
    assert not nvjpeg_safe(cmyk)
    exif = Image.Exif()
    exif[0x010E] = "a description"  # an APP1 segment before the frame header
    assert nvjpeg_safe(_jpeg(exif=exif.tobytes()))


def test_truncated_and_broken_headers_go_to_pillow():
    data = _jpeg()
    sos = data.index(b"\xff\xda")
    assert not read_header(data[: sos + 30]).complete  # pixels cut off: no end-of-image
    assert not nvjpeg_safe(data[: sos + 30])
    assert read_header(data[:sos]) is None  # cut off before the scan
    assert read_header(data[:10]) is None
    assert read_header(b"\x89PNG\r\n\x1a\n") is None
    assert read_header(b"") is None


def test_files_nvjpeg_may_get_wrong_are_decoded_in_the_worker(tmp_path):
    files = {
        "a/0.jpg": _jpeg(),
        "a/1.jpg": _jpeg(progressive=True),
        "b/2.jpg": _jpeg("CMYK"),
        "b/3.jpg": _jpeg(size=(64, 30)),
    }
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(data)
    source = ImageFolderSource(tmp_path)
    path = GPUDataPath(PRE, CPU)
    batch = path.collate([path.load(source, i) for i in range(len(source))])
    assert batch.jpeg_rows == [0, 3] and batch.pixel_rows == [1, 2]
    expected = torch.stack([PRE.transform()(source.load(i)) for i in range(len(source))])
    assert torch.equal(path.to_batch(batch, CPU), expected)  # the CPU path's pixels exactly


def test_rows_are_placed_by_one_index_tensor():
    rows = torch.arange(5 * 3).view(5, 3)
    order = [3, 0, 4, 1, 2]
    placed = place_rows(rows, order)
    for i, row in enumerate(order):
        assert torch.equal(placed[row], rows[i])
    assert place_rows(rows, range(5)) is rows  # already in order: no copy
    rng = np.random.default_rng(1)
    sizes = [(40, 30), (30, 40), (40, 30), (50, 50), (30, 40)]
    images = [torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8)) for w, h in sizes]
    batched = resize_crop(images, PRE)
    for i, image in enumerate(images):
        assert torch.equal(batched[i], resize_crop([image], PRE)[0])


def test_fixed_batch_pads_short_batches_and_drops_the_padding():
    backbone = get_backbone("toy")
    model = backbone.features(["pooled"]).eval()
    x = torch.randn(3, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    seen = []
    fixed = FixedBatch(lambda batch: seen.append(batch.shape[0]) or model(batch), 8)
    with torch.inference_mode():
        out = fixed(x)["pooled"]
        assert seen == [8] and out.shape[0] == 3
        torch.testing.assert_close(out, model(x)["pooled"])
        assert fixed(torch.randn(8, 3, 32, 32))["pooled"].shape[0] == 8
    padded = pad_rows(x, 8)
    assert padded.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(padded[:3], x) and not padded[3:].any()


@pytest.mark.parametrize("decode", ["exact", "fast"])
def test_uint8_shipping_normalises_to_the_same_batch(tmp_path, decode):
    for i in range(3):
        (tmp_path / "ab"[i % 2]).mkdir(exist_ok=True)
        (tmp_path / "ab"[i % 2] / f"{i}.jpg").write_bytes(_jpeg(size=(90 + 10 * i, 85)))
    source = ImageFolderSource(tmp_path)
    floats, uint8 = CPUDataPath(PRE, decode), CPUDataPath(PRE, decode, uint8=True)
    a = floats.to_batch(floats.collate([floats.load(source, i) for i in range(3)]), CPU)
    items = [uint8.load(source, i) for i in range(3)]
    assert items[0].dtype == torch.uint8 and uint8.blank().dtype == torch.uint8
    b = uint8.to_batch(uint8.collate(items), CPU)
    assert torch.equal(a, b)  # the same ops, in the workers or on the device
    assert b.is_contiguous(memory_format=torch.channels_last)
