"""Image sources under unusual files and layouts: tables named no split, labels that are not
labels, class names spelt two ways, one image reached twice, malformed manifests."""

from __future__ import annotations

import io
import os
import re
import unicodedata

import numpy as np
import pytest
from dataset_files import hf_dataset, write_shards
from PIL import Image

from featpipe.data import (
    ArraySource,
    CSVSource,
    ImageFolderSource,
    ParquetSource,
    WebDatasetSource,
    open_source,
)
from featpipe.data.images import load_resized, load_source_image
from featpipe.errors import ConfigError, SourceError


def test_a_parquet_file_that_names_no_split_loads_its_images(tmp_path):
    data, expected = hf_dataset(splits=("train",))
    data["train"].remove_columns("coarse_label").to_parquet(str(tmp_path / "plain.parquet"))
    source = open_source(str(tmp_path / "plain.parquet"), test_fraction=0.25)
    assert isinstance(source, ParquetSource) and source.ids[0] == "train/00000"
    np.testing.assert_array_equal(np.asarray(source.load(0)), expected["train"][0])
    assert source.read_bytes(0)
    assert source.fingerprint() != source.fingerprint(content=True)  # both computed


def _png(level: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (level, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "labels, says",
    [
        ([0.0, 1.0, float("nan"), 1.0], "without a label"),  # pandas' missing label
        (["cat", "dog", "", "cat"], "without a label"),
        ([[0], [1], [0], [1]], "holds list values"),
    ],
    ids=["nan", "empty", "list"],
)
def test_table_labels_that_are_no_class_are_refused(tmp_path, labels, says):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"image": [_png(i) for i in range(4)], "label": labels})
    pq.write_table(table, tmp_path / "train.parquet")
    with pytest.raises(SourceError, match=f"Column 'label' of .* {says}"):
        ParquetSource(tmp_path / "train.parquet")


def _manifest(tmp_path, text: str) -> CSVSource:
    for name in ("a", "b"):
        Image.new("RGB", (4, 4)).save(tmp_path / f"{name}.png")
    (tmp_path / "m.csv").write_text(text, encoding="utf-8")
    return CSVSource(tmp_path / "m.csv")


@pytest.mark.parametrize(
    "text",
    [
        "path,label,label\na.png,cat,dog\nb.png,dog,cat\n",  # which one is the label?
        "path,Label,label \na.png,cat,dog\nb.png,dog,cat\n",
        "path,label,split,Split\na.png,cat,train,test\nb.png,dog,train,test\n",
    ],
    ids=["label", "label-in-two-cases", "split"],
)
def test_a_manifest_naming_a_column_twice_is_refused(tmp_path, text):
    with pytest.raises(SourceError, match=r"named twice in its header .*: (label|split)\. "):
        _manifest(tmp_path, text)


@pytest.mark.parametrize("delimiter", [";", "\t"])
def test_a_manifest_split_by_another_delimiter_says_so(tmp_path, delimiter):
    text = f"path{delimiter}label\na.png{delimiter}cat\nb.png{delimiter}dog\n"
    said = re.escape(f"separated by {delimiter!r}: featpipe reads comma")
    with pytest.raises(SourceError, match=said) as err:
        _manifest(tmp_path, text)
    assert "Did you mean" not in str(err.value)


CAFE_NFC, CAFE_NFD = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")


@pytest.mark.parametrize("kind", ["folder", "csv", "arrays"])
def test_one_class_name_in_two_unicode_forms_is_refused(tmp_path, kind):
    names = [CAFE_NFC, CAFE_NFD, "tea"]  # the first two print alike: 'café'
    with pytest.raises(SourceError, match=r"are one name in two Unicode forms \('caf"):
        if kind == "folder":
            for name in names:
                (tmp_path / name).mkdir()
                Image.new("RGB", (4, 4)).save(tmp_path / name / "a.png")
            ImageFolderSource(tmp_path)
        elif kind == "csv":
            rows = "".join(f"{i}.png,{name}\n" for i, name in enumerate(names))
            for i in range(len(names)):
                Image.new("RGB", (4, 4)).save(tmp_path / f"{i}.png")
            (tmp_path / "m.csv").write_text("path,label\n" + rows, encoding="utf-8")
            CSVSource(tmp_path / "m.csv")
        else:
            ArraySource(np.zeros((3, 4, 4), np.uint8), names)


@pytest.mark.parametrize("link", ["folder-in-another-class", "file-in-its-class"])
def test_a_folder_reaching_one_image_twice_through_a_symlink_is_refused(tmp_path, link):
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (4, 4)).save(tmp_path / name / f"{name}.png")
    if link == "folder-in-another-class":  # dog's images would also be labelled cat
        (tmp_path / "cat" / "more").symlink_to(tmp_path / "dog")
    else:  # one image twice in cat: it could land in train and in test
        (tmp_path / "cat" / "copy.png").symlink_to(tmp_path / "cat" / "cat.png")
    with pytest.raises(SourceError, match="reaches one image twice, through a symlink: 'cat/"):
        ImageFolderSource(tmp_path, test_fraction=0.4)


@pytest.mark.parametrize("where", [".", "train"])
def test_images_in_no_class_folder_are_said_to_be_left_out(tmp_path, where):
    classes = tmp_path if where == "." else tmp_path / "train"
    for name in ("cat", "dog"):
        (classes / name).mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(classes / name / "a.png")
    Image.new("RGB", (4, 4)).save(tmp_path / where / "stray.PNG")
    with pytest.warns(UserWarning, match=r"1 image directly in .* \(stray.PNG\) is in no"):
        assert len(ImageFolderSource(tmp_path)) == 2


@pytest.mark.parametrize("spellings", [("01", "1"), ("2", "2.0")])
def test_one_number_spelt_two_ways_is_not_two_classes(tmp_path, spellings):
    rows = "".join(f"{i}.png,{label}\n" for i, label in enumerate([*spellings, "3"]))
    for i in range(3):
        Image.new("RGB", (4, 4)).save(tmp_path / f"{i}.png")
    (tmp_path / "m.csv").write_text("path,label\n" + rows, encoding="utf-8")
    with pytest.raises(SourceError, match="are one number spelt two ways"):
        CSVSource(tmp_path / "m.csv")


def test_a_table_row_holding_an_image_path_is_fingerprinted_by_that_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "imgs").mkdir()
    for i in range(2):
        Image.new("RGB", (4, 4), (i, 0, 0)).save(tmp_path / "imgs" / f"{i}.png")
    kind = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    cells = [{"bytes": None, "path": f"imgs/{i % 2}.png"} for i in range(4)]
    table = pa.table({"image": pa.array(cells, type=kind), "label": [0, 1, 0, 1]})
    pq.write_table(table, tmp_path / "train.parquet")
    before = ParquetSource(tmp_path / "train.parquet").fingerprint()
    Image.new("RGB", (6, 6), (200, 0, 0)).save(tmp_path / "imgs" / "0.png")  # new pixels
    assert ParquetSource(tmp_path / "train.parquet").fingerprint() != before


def test_table_sources_take_the_fast_decode(tmp_path):
    data, expected = hf_dataset(splits=("train",))
    data["train"].remove_columns("coarse_label").to_parquet(str(tmp_path / "train.parquet"))
    source = ParquetSource(tmp_path / "train.parquet")
    assert source.path(0) is None  # encoded bytes: no file to decode at a reduced scale
    pixels = load_resized(source, 0, 16, "bilinear")  # --decode fast (the GPU path: path())
    np.testing.assert_array_equal(pixels.permute(1, 2, 0).numpy(), expected["train"][0])
    np.testing.assert_array_equal(
        np.asarray(load_source_image(source, 0, 8)), pixels.permute(1, 2, 0)
    )


def test_a_class_given_no_train_row_is_warned_of(tmp_path):
    rows = "a.png,cat,train\nb.png,dog,train\nc.png,fox,test\nd.png,cat,test\n"
    for name in "abcd":
        Image.new("RGB", (4, 4)).save(tmp_path / f"{name}.png")
    (tmp_path / "m.csv").write_text("path,label,split\n" + rows, encoding="utf-8")
    with pytest.warns(UserWarning, match=r"class 'fox' has val or test rows but no train"):
        CSVSource(tmp_path / "m.csv")
    images, labels = np.zeros((4, 4, 4), np.uint8), ["cat", "dog", "fox", "cat"]
    with pytest.warns(UserWarning, match=r"class 'fox' has val or test rows but no train"):
        ArraySource(images, labels, splits=["train", "train", "val", "test"])


def test_a_parquet_folder_reads_image_paths_relative_to_itself(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "ds" / "imgs").mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (4, 4), (50 * i, 0, 0)).save(tmp_path / "ds" / "imgs" / f"{i}.png")
    kind = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    cells = [{"bytes": None, "path": f"imgs/{i % 2}.png"} for i in range(4)]
    table = pa.table({"image": pa.array(cells, type=kind), "label": [0, 1, 0, 1]})
    pq.write_table(table, tmp_path / "ds" / "train.parquet")
    for spec in (tmp_path / "ds", tmp_path / "ds" / "train.parquet"):  # folder, lone file
        source = ParquetSource(spec)
        assert source.path(1) == str(tmp_path / "ds" / "imgs" / "1.png")
        assert np.asarray(source.load(1))[0, 0].tolist() == [50, 0, 0]


def test_shard_labels_that_are_blank_or_padded_are_refused(tmp_path):
    def samples(labels):
        return [
            {"__key__": f"k{i}", "png": _png(i), "json": {"label": label}}
            for i, label in enumerate(labels)
        ]

    write_shards(tmp_path / "blank", samples(["cat", "dog", ""]), per_shard=3)
    with pytest.raises(SourceError, match="its json:label has none"):
        WebDatasetSource(str(tmp_path / "blank"))
    write_shards(tmp_path / "padded", samples(["cat", "dog", "cat "]), per_shard=3)
    with pytest.raises(SourceError, match="'cat' and 'cat ' differ only by spaces at their ends"):
        WebDatasetSource(str(tmp_path / "padded"))


def test_a_macos_zips_resource_fork_folder_is_no_class(tmp_path):
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (4, 4)).save(tmp_path / name / "a.jpg")
        (tmp_path / "__MACOSX" / name).mkdir(parents=True)
        (tmp_path / "__MACOSX" / name / "._a.jpg").write_bytes(b"\x00\x05\x16\x07")
    assert ImageFolderSource(tmp_path).classes == ["cat", "dog"]


@pytest.mark.skipif(os.sep != "/", reason="a backslash separates folders on Windows")
def test_a_manifest_with_windows_paths_says_to_use_slashes(tmp_path):
    (tmp_path / "cat").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "cat" / "a.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "b.png")
    (tmp_path / "m.csv").write_text("path,label\ncat\\a.png,cat\nb.png,dog\n", encoding="utf-8")
    with pytest.raises(SourceError, match=r"1 missing file.* Separate folders with '/'"):
        CSVSource(tmp_path / "m.csv")


@pytest.mark.parametrize("ids", [[10, 11], "ab", ["a", None]], ids=["ints", "a-string", "none"])
def test_array_ids_that_are_not_strings_are_refused(ids):
    with pytest.raises(SourceError, match="ArraySource ids are"):
        ArraySource(np.zeros((2, 4, 4), np.uint8), [0, 1], ids=ids).fingerprint()


def test_photos_of_extensions_not_read_are_said_to_be_left_out(tmp_path):
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (4, 4)).save(tmp_path / name / "a.jpg")
    Image.new("RGB", (4, 4)).save(tmp_path / "cat" / "b.JFIF", format="JPEG")  # a browser's
    with pytest.warns(UserWarning, match=r"leaves out 1 \.jfif file: featpipe reads"):
        assert len(ImageFolderSource(tmp_path)) == 2
    assert len(ImageFolderSource(tmp_path, extensions=("jpg", "jfif"))) == 3


@pytest.mark.parametrize("spec", ["", "  ", None])
def test_an_empty_source_spec_is_not_the_working_directory(tmp_path, monkeypatch, spec):
    for name in ("cat", "dog"):  # a working directory that would open as an image folder
        (tmp_path / name).mkdir()
        Image.new("RGB", (4, 4)).save(tmp_path / name / "a.png")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="No image source given"):
        open_source(spec)
