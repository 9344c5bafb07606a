"""Trust sweep of the data sources: colours of unusual image modes, torchvision files, CSV
manifests, WebDataset shards and splits. Each test builds its own tiny data."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from dataset_files import write_mnist
from PIL import Image, ImageCms

from featpipe.data import load_rgb, open_source
from featpipe.errors import SourceError


def test_a_lab_tiff_is_converted_to_srgb(tmp_path):
    # Pillow's LAB -> RGB conversion is a colour conversion (the one ImageCms builds), not a
    # copy of the L, a and b bytes as R, G and B
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.frombytes("LAB", (8, 8), pixels.tobytes()).save(tmp_path / "lab.tif")
    with Image.open(tmp_path / "lab.tif") as lab:
        assert lab.mode == "LAB"
        to_srgb = ImageCms.buildTransform(
            ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB"
        )
        expected = np.asarray(ImageCms.applyTransform(lab, to_srgb))
    np.testing.assert_array_equal(np.asarray(load_rgb(tmp_path / "lab.tif")), expected)
    grey = Image.new("LAB", (2, 2), (255, 128, 128))  # L* 100, a* = b* = 0: white
    grey.save(tmp_path / "white.tif")
    assert min(load_rgb(tmp_path / "white.tif").getpixel((0, 0))) >= 254  # not (255, 128, 128)


def _idx_labels(path, labels):
    path.write_bytes(struct.pack(">II", 0x801, len(labels)) + np.uint8(labels).tobytes())


def test_torchvision_images_and_labels_of_different_copies_are_refused(tmp_path):
    # 12 train and 6 test images, with 10 train and 8 test labels: the totals match, so the
    # labels shifted two train images into test, each with another image's label
    write_mnist(tmp_path, "MNIST")
    raw = tmp_path / "MNIST" / "raw"
    _idx_labels(raw / "train-labels-idx1-ubyte", np.arange(10) % 3)
    _idx_labels(raw / "t10k-labels-idx1-ubyte", np.arange(8) % 3)
    with pytest.raises(SourceError) as err:
        open_source(f"torchvision:MNIST@{tmp_path}")
    message = str(err.value)
    assert "train set has 12 images but 10 labels" in message
    assert "MNIST/raw/train-labels-idx1-ubyte" in message and "copy them again" in message
