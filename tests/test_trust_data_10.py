"""Trust sweep of the data sources (session 12): integer labels that skip values, 12-bit data
in 16-bit files, class names that differ only in case. Each test builds its own tiny data."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from dataset_files import write_shards
from PIL import Image

import featpipe.data.images as images
from featpipe.data import (
    ArraySource,
    CSVSource,
    ImageFolderSource,
    ParquetSource,
    load_rgb,
    open_source,
)
from featpipe.errors import ConfigError, SourceError


def _quiet(build):
    """What ``build()`` returns, and the messages of the warnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = build()
    return out, [str(w.message) for w in caught]


def _grey(n: int = 6) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 4, 4), dtype=np.uint8)


# -- integer labels that skip values ---------------------------------------------------------


def test_integer_labels_that_skip_values_are_warned_of():
    # 0, 5, 9 made classes '0'..'9': reports then counted 10 classes, listed seven empty ones
    # in the per-class tables, gave top-5 over classes that cannot occur, and few-shot draws
    # refused classes '1', '2', ... that the user never had
    source, said = _quiet(lambda: ArraySource(_grey(), [0, 5, 9, 0, 5, 9]))
    assert source.classes == [str(i) for i in range(10)]  # not renumbered
    assert list(source.labels) == [0, 5, 9, 0, 5, 9]
    (message,) = [m for m in said if "no image has" in m]
    assert "ArraySource 'arrays'" in message and "7 of them" in message
    assert "'1', '2', '3', '4', '6' and 2 more" in message
    assert "10 classes where the images have 3" in message and "as text" in message


def test_one_based_labels_name_the_empty_class_zero(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG")
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(
        pa.table({"image": [buffer.getvalue()] * 4, "label": [1, 2, 1, 2]}),
        tmp_path / "train.parquet",
    )
    _, said = _quiet(lambda: ParquetSource(tmp_path / "train.parquet"))
    (message,) = [m for m in said if "no image has" in m]
    assert "Column 'label'" in message and "1 of them ('0')" in message


def test_dense_or_named_labels_are_not_warned_of():
    _, said = _quiet(lambda: ArraySource(_grey(), [0, 1, 2, 0, 1, 2]))
    assert not said
    # classes named by the user may have no image (a test set without some classes)
    _, said = _quiet(lambda: ArraySource(_grey(), [0, 5, 9, 0, 5, 9], classes=list("abcdefghij")))
    assert not said


# -- 12-bit data in 16-bit files -------------------------------------------------------------


@pytest.fixture
def warn_again(monkeypatch):
    monkeypatch.setattr(images, "_warned_low_bits", False, raising=False)


def test_twelve_bit_data_in_a_sixteen_bit_png_is_warned_of(tmp_path, warn_again):
    pixels = (np.arange(64).reshape(8, 8) * 64).astype(np.uint16)  # 0..4032
    Image.fromarray(pixels).save(tmp_path / "raw12.png")
    rgb, said = _quiet(lambda: np.asarray(load_rgb(tmp_path / "raw12.png")))
    assert rgb.max() == 16  # decoded as before: near-black, not guessed brighter
    (message,) = said
    assert "raw12.png" in message and "values reach only 4032 (range 0..4032)" in message
    assert "12-bit data" in message and "values << 4" in message
    _, again = _quiet(lambda: load_rgb(tmp_path / "raw12.png"))
    assert not again  # once a process: a 12-bit dataset has it in every file


def test_full_range_sixteen_bit_and_eight_bit_images_are_not_warned_of(tmp_path, warn_again):
    full = (np.arange(64).reshape(8, 8) * 1024).astype(np.uint16)
    Image.fromarray(full).save(tmp_path / "full16.png")
    Image.fromarray((np.arange(64).reshape(8, 8) * 4).astype(np.uint8)).save(tmp_path / "8.png")
    rgb, said = _quiet(lambda: np.asarray(load_rgb(tmp_path / "full16.png")))
    assert not said and rgb.max() == round(63 * 1024 * 255 / 65535)
    rgb, said = _quiet(lambda: np.asarray(load_rgb(tmp_path / "8.png")))
    assert not said and rgb.max() == 252


def _rgb16_png(path, pixels: np.ndarray) -> None:
    """A 16-bit RGB PNG of ``pixels`` (H, W, 3), written by hand: Pillow cannot save one."""
    h, w, _ = pixels.shape
    rows = pixels.astype(">u2")
    raw = b"".join(b"\x00" + rows[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    png = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png)


def test_twelve_bit_data_in_a_sixteen_bit_rgb_png_is_warned_of(tmp_path, warn_again):
    # Pillow keeps the high byte of a 16-bit RGB PNG: 12-bit values decode to at most 15
    _rgb16_png(tmp_path / "rgb12.png", np.arange(48).reshape(4, 4, 3) * 85)  # 0..3995
    rgb, said = _quiet(lambda: np.asarray(load_rgb(tmp_path / "rgb12.png")))
    assert rgb.max() == 15
    (message,) = said
    assert "rgb12.png" in message and "values stay below 4096" in message
    _rgb16_png(tmp_path / "rgb16.png", np.arange(48).reshape(4, 4, 3) * 1365)  # full range
    images._warned_low_bits = False
    rgb, said = _quiet(lambda: np.asarray(load_rgb(tmp_path / "rgb16.png")))
    assert not said and rgb.max() == 64155 >> 8


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_an_icc_profile_is_not_applied_as_torchvision_does_not(tmp_path, suffix):
    # a guard: pretrained models saw pixels decoded without colour management (torchvision's
    # and timm's loaders: Image.open(f).convert("RGB")), so featpipe decodes them the same way
    ImageCms = pytest.importorskip("PIL.ImageCms")
    folder = pytest.importorskip("torchvision.datasets.folder")
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()
    pixels = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    path = tmp_path / f"icc{suffix}"
    Image.fromarray(pixels).save(path, icc_profile=icc)
    assert Image.open(path).info["icc_profile"] == icc
    expected = np.asarray(folder.pil_loader(path))
    np.testing.assert_array_equal(np.asarray(load_rgb(path)), expected)
    with images.pillow_only():
        np.testing.assert_array_equal(np.asarray(load_rgb(path)), expected)


# -- class names that differ only in case ----------------------------------------------------


def _folder(root, names):
    for name in names:
        (root / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (4, 4), (i, 0, 0)).save(root / name / f"{i}.png")
    return root


def test_class_folders_that_differ_only_in_case_are_warned_of_not_merged(tmp_path):
    source, said = _quiet(lambda: ImageFolderSource(_folder(tmp_path, ["Cat", "cat", "dog"])))
    assert source.classes == ["Cat", "cat", "dog"]
    (message,) = said
    assert "classes 'Cat' and 'cat' differ only in case" in message
    assert "does not merge" in message


def test_csv_labels_that_differ_only_in_case_are_warned_of(tmp_path):
    _folder(tmp_path, ["img"])
    rows = ["path,label", "img/0.png,Dog", "img/1.png,dog"]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    _, said = _quiet(lambda: CSVSource(tmp_path / "m.csv"))
    assert any("'Dog' and 'dog' differ only in case" in m for m in said)


def test_single_letters_that_differ_in_case_are_not_warned_of(tmp_path):
    # a handwriting set's 'A' and 'a' are two classes
    _, said = _quiet(lambda: ImageFolderSource(_folder(tmp_path, ["A", "a", "b"])))
    assert not said


def test_shards_of_one_integer_class_are_refused_as_one_class(tmp_path):
    # label 3 on every sample made classes '0'..'3', which passed the two-class check; the
    # same shards with a class name were refused
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG")
    samples = [{"__key__": f"k{i}", "png": buffer.getvalue(), "cls": 3} for i in range(4)]
    write_shards(tmp_path, samples, 2)
    with pytest.raises(SourceError, match=r"at least two classes.*give only \['3'\]"):
        _quiet(lambda: open_source(f"wds:{tmp_path}"))


@pytest.mark.parametrize(
    "spec", ["hf-dataset:", "hf-dataset:?label=label", "wds:", "wds:?image=png"]
)
def test_a_prefix_with_no_path_does_not_read_the_working_directory(tmp_path, monkeypatch, spec):
    # Path("") is the working directory: 'hf-dataset:' (an unset $DATA) read the parquet
    # files lying there as the dataset, 'wds:' the shards
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG")
    pq.write_table(
        pa.table({"image": [buffer.getvalue()] * 4, "label": [0, 1, 0, 1]}), tmp_path / "x.parquet"
    )
    samples = [{"__key__": f"k{i}", "png": buffer.getvalue(), "cls": i % 2} for i in range(4)]
    write_shards(tmp_path, samples, 2)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="names no dataset after its prefix"):
        open_source(spec)


def test_a_saved_dataset_with_an_empty_split_is_one_line(tmp_path):
    # datasets' load_from_disk fails with an IndexError on a split saved with no rows: it
    # came out of featpipe extract as a traceback
    datasets = pytest.importorskip("datasets")
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG")
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])}
    )
    image = {"bytes": buffer.getvalue(), "path": None}
    splits = {
        "train": datasets.Dataset.from_dict({"image": [], "label": []}, features=features),
        "test": datasets.Dataset.from_dict(
            {"image": [image] * 2, "label": [0, 1]}, features=features
        ),
    }
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(SourceError, match=r"its split 'train' holds no rows\. Save it again"):
        open_source(f"hf-dataset:{tmp_path / 'saved'}")


def _table(path, n: int) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG")
    images_column = pa.array([buffer.getvalue()] * n, pa.binary())
    labels = pa.array([i % 2 for i in range(n)], pa.int64())
    pq.write_table(pa.table({"image": images_column, "label": labels}), path)


def test_a_parquet_file_of_no_rows_is_one_line(tmp_path):
    # max() of no labels: a ValueError traceback
    _table(tmp_path / "empty.parquet", 0)
    with pytest.raises(SourceError, match=r"empty\.parquet' holds no rows"):
        open_source(str(tmp_path / "empty.parquet"))


def test_a_table_whose_train_split_has_no_rows_is_refused(tmp_path):
    # opened with every row in test (a warning that classes had no train row), as a source
    # that names no train row is refused everywhere else
    _table(tmp_path / "train.parquet", 0)
    _table(tmp_path / "test.parquet", 4)
    with pytest.raises(
        SourceError, match=r"No train rows in parquet dataset .*\(it gives 4 test\)"
    ):
        _quiet(lambda: open_source(f"hf-dataset:{tmp_path}"))
