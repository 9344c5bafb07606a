"""Trust sweep of the data sources: colours of unusual image modes, torchvision files, CSV
manifests, WebDataset shards and splits. Each test builds its own tiny data."""

from __future__ import annotations

import io
import struct
import warnings

import numpy as np
import pytest
from dataset_files import write_cifar, write_mnist, write_shards
from PIL import Image

from featpipe.data import ArraySource, CSVSource, ParquetSource, load_rgb, open_source, to_rgb
from featpipe.data.splits import subsample
from featpipe.errors import SourceError


def test_a_lab_tiff_is_converted_to_srgb(tmp_path):
    # Pillow's LAB -> RGB conversion is a colour conversion (the one ImageCms builds), not a
    # copy of the L, a and b bytes as R, G and B
    ImageCms = pytest.importorskip("PIL.ImageCms")  # Pillow built with littlecms
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


def _png(level: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (level, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_an_integer_label_too_large_for_a_class_index_is_refused(tmp_path):
    # integer labels make classes 0..max: an id read as a label made millions of class names
    # (1e9 fill the memory), and one beyond int64 was numpy's OverflowError
    images = np.zeros((4, 2, 2), np.uint8)
    with pytest.raises(SourceError, match=r"integer label 5000000 would make 5,000,001 classes"):
        ArraySource(images, [0, 1, 0, 5_000_000])
    samples = [
        {"__key__": f"{i:03d}", "png": _png(i), "json": {"label": [0, 1, 0, 10**30][i]}}
        for i in range(4)
    ]
    write_shards(tmp_path / "wds", samples, per_shard=4)
    with pytest.raises(SourceError, match=r"json:label labels of the shards .* looks like an id"):
        open_source(f"wds:{tmp_path / 'wds'}")
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"image": [_png(i) for i in range(4)], "label": [0, 1, 0, 3_000_000]})
    pq.write_table(table, tmp_path / "train.parquet")
    with pytest.raises(SourceError, match=r"Column 'label' of .*: the integer label 3000000"):
        ParquetSource(tmp_path / "train.parquet")
    assert ArraySource(images, [0, 1, 0, 999_999]).classes[-1] == "999999"  # the bound


def test_a_column_of_splits_that_featpipe_does_not_read_is_warned_of(tmp_path):
    # a manifest's 'subset' column, or a parquet table's 'split' column: featpipe reads neither,
    # so their test rows were train rows (or carved at random by test_fraction) without a word
    for name in ("a", "b", "c", "d"):
        Image.new("RGB", (4, 4)).save(tmp_path / f"{name}.png")
    rows = ["a.png,cat,train", "b.png,dog,train", "c.png,cat,Test", "d.png,dog,test"]
    (tmp_path / "m.csv").write_text("path,label,subset\n" + "\n".join(rows) + "\n")
    with pytest.warns(UserWarning, match=r"column 'subset' holds split names .* 'Test' rows"):
        source = CSVSource(tmp_path / "m.csv", test_fraction=0.25)
    assert source.split_counts()["test"] == 1  # the fraction's draw, as before
    import pyarrow as pa
    import pyarrow.parquet as pq

    splits = ["train", "train", "train", "validation", "test", "test"]
    table = pa.table({"image": [_png(i) for i in range(6)], "label": [0, 1] * 3, "split": splits})
    pq.write_table(table, tmp_path / "all.parquet")
    with pytest.warns(UserWarning, match=r"'test' rows are read as train; its 'validation' rows"):
        ParquetSource(tmp_path / "all.parquet")
    # tables named after their split, each holding its own name, are read as they say
    (tmp_path / "parts").mkdir()
    for split, rows in (("train", slice(0, 4)), ("test", slice(4, 6))):
        pq.write_table(
            table.slice(rows.start, rows.stop - rows.start).set_column(
                2, "split", pa.array([split] * (rows.stop - rows.start))
            ),
            tmp_path / "parts" / f"{split}.parquet",
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ParquetSource(tmp_path / "parts").split_counts()["test"] == 2


def test_a_torchvision_root_inside_the_dataset_names_the_root_to_give(tmp_path, monkeypatch):
    # the dataset's own folder (or a file in it) given as the root: the message said only to
    # download the dataset, which is already there
    write_cifar(tmp_path, monkeypatch)
    with pytest.raises(SourceError, match=rf"give that folder, torchvision:CIFAR10@{tmp_path}\."):
        open_source(f"torchvision:CIFAR10@{tmp_path / 'cifar-10-batches-py'}")
    write_mnist(tmp_path, "MNIST")
    for inside in ("MNIST/raw", "MNIST/raw/train-images-idx3-ubyte"):
        with pytest.raises(SourceError) as err:
            open_source(f"torchvision:MNIST@{tmp_path / inside}")
        assert f"They are under {str(tmp_path)!r}" in str(err.value)
        assert "download=True" not in str(err.value)
    assert "is a file, not a folder" in str(err.value)


def test_a_shard_sample_labelled_minus_one_is_named(tmp_path):
    # -1 marks an unlabelled sample: the message said 'Integer labels must be >= 0; got -1.',
    # naming neither the sample nor the shard
    samples = [{"__key__": f"{i:03d}", "png": _png(i), "cls": [0, 1, -1, 1][i]} for i in range(4)]
    write_shards(tmp_path / "wds", samples, per_shard=2)
    with pytest.raises(SourceError, match=r"Sample '002' of shard .*shards-000001.tar': its cls"):
        open_source(f"wds:{tmp_path / 'wds'}")


def test_a_premultiplied_grey_image_with_alpha_is_composited_like_its_la_copy():
    # mode La (premultiplied L and alpha, as Pillow resizes LA in) was a ValueError traceback:
    # 'conversion from La to L not supported'
    la = Image.merge("LA", (Image.new("L", (2, 2), 200), Image.new("L", (2, 2), 128)))
    assert to_rgb(la.convert("La")).getpixel((0, 0)) == to_rgb(la).getpixel((0, 0))


def test_a_train_limit_that_drops_a_class_is_warned_of():
    # --limit-train 2 over 3 classes kept 2 of them: each test image of the third counted as an
    # error without a word, where a source giving a class no train row is warned of
    labels = np.repeat([0, 1, 2], 6)
    splits = np.tile(["train"] * 4 + ["test"] * 2, 3)
    source = ArraySource(np.zeros((18, 2, 2), np.uint8), labels, splits=splits)
    with pytest.warns(UserWarning, match=r"Subsampling to \{'train': 2\} leaves class(es)? '"):
        sub = subsample(source, {"train": 2})
    assert sub.split_counts() == {"train": 2, "val": 0, "test": 6}  # the draw, as before
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        subsample(source, {"train": 3, "test": 3})
        # a class the source gives no train row was warned of when it was opened
        subsample(source.subset(np.flatnonzero((labels != 2) | (splits == "test"))), {"train": 4})


def _classlabel_split(names: list[str], labels: list[int]):
    import datasets

    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=names)}
    )
    images = [{"bytes": _png(i), "path": None} for i in range(len(labels))]
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


@pytest.mark.parametrize("saved", ["parquet", "save_to_disk"])
def test_splits_that_name_their_classes_differently_are_refused(tmp_path, saved):
    # each split encoded on its own (class_encode_column): test names its classes c, b, a and
    # train a, b, c; every label was read with the first file's names, so train's a and c
    # were swapped without a word
    import datasets

    train = _classlabel_split(["a", "b", "c"], [0, 1, 2, 0, 1, 2])
    test = _classlabel_split(["c", "b", "a"], [0, 2])
    if saved == "parquet":
        train.to_parquet(str(tmp_path / "train.parquet"))
        test.to_parquet(str(tmp_path / "test.parquet"))
        spec = f"hf-dataset:{tmp_path}"
    else:
        datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "hf"))
        spec = str(tmp_path / "hf")
    with pytest.raises(SourceError, match=r"'label' names its classes one way in .*label 0 is"):
        open_source(spec)
    same = _classlabel_split(["a", "b", "c"], [2, 0])  # one encoding: read as before
    same.to_parquet(str(tmp_path / "same" / "test.parquet"))
    train.to_parquet(str(tmp_path / "same" / "train.parquet"))
    source = open_source(f"hf-dataset:{tmp_path / 'same'}")
    assert [source.classes[y] for y in source.labels] == [*"abcabc", "c", "a"]


def test_a_folder_of_parquet_files_says_how_to_open_it(tmp_path):
    # a Hub snapshot (data/train-00000-of-00001.parquet) given as a folder was read as image
    # class folders: 'Class folder .../data contains no images', not a word about parquet
    table = _classlabel_split(["a", "b"], [0, 1, 0, 1])
    table.to_parquet(str(tmp_path / "data" / "train-00000-of-00001.parquet"))
    with pytest.raises(SourceError, match=rf"contains no images.* give hf-dataset:{tmp_path}\."):
        open_source(str(tmp_path))
    assert len(open_source(f"hf-dataset:{tmp_path}")) == 4


def test_a_split_column_only_some_splits_have_is_read_where_it_is(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = [_png(i) for i in range(4)]
    train = pa.table(
        {"image": images, "label": [0, 1, 0, 1], "split": ["train"] * 2 + ["test"] * 2}
    )
    pq.write_table(train, tmp_path / "train.parquet")
    pq.write_table(pa.table({"image": images[:2], "label": [0, 1]}), tmp_path / "test.parquet")
    with pytest.warns(UserWarning, match=r"'test' rows are read as train"):
        assert ParquetSource(tmp_path).split_counts() == {"train": 4, "val": 0, "test": 2}


def test_a_split_without_the_label_column_is_named(tmp_path):
    # a competition's test split has no labels: pyarrow's KeyError traceback
    # ('Field "label" does not exist in schema')
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = [_png(i) for i in range(4)]
    pq.write_table(pa.table({"image": images, "label": [0, 1, 0, 1]}), tmp_path / "train.parquet")
    pq.write_table(pa.table({"image": images[:2]}), tmp_path / "test.parquet")
    with pytest.raises(SourceError, match=r"its test split has no column 'label' \(its columns"):
        ParquetSource(tmp_path)
