"""Trust sweep of the data sources (session 13): one image reached through hard links, and
folders a scan cannot list. Each test builds its own tiny data; an unreadable folder is
simulated by failing os.scandir for it (tests run as root, where permissions do not bite)."""

from __future__ import annotations

import os
import re

import pytest
from conftest import make_image_folder
from dataset_files import write_parquet_folder, write_wds_dataset
from PIL import Image

from featpipe.data import CSVSource, ImageFolderSource, open_source
from featpipe.data.unreadable import unreadable_images
from featpipe.errors import ImageReadError, SourceError


def _refuse_listing(monkeypatch, name: str) -> None:
    """os.scandir (which os.walk uses) fails with EACCES for the folders named ``name``."""
    real = os.scandir

    def scandir(path="."):
        if os.path.basename(os.fspath(path)) == name:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)


def _two_shard_folders(tmp_path) -> None:
    """tmp_path/shards/part1 and part2, a webdataset in each (18 samples, 36 in all)."""
    pytest.importorskip("webdataset")
    write_wds_dataset(tmp_path / "shards" / "part1")
    write_wds_dataset(tmp_path / "shards" / "part2")


# -- hard links ------------------------------------------------------------------------------


def test_a_hard_link_in_two_classes_is_refused(tmp_path):
    # a symlink was caught but a hard link (cp -l, a deduplicating tool) gave one image to two
    # classes, or to train and to test
    root = make_image_folder(tmp_path / "images", classes=("cat", "dog"), per_class=3)
    os.link(root / "cat" / "000.jpg", root / "dog" / "dup.jpg")
    with pytest.raises(SourceError, match=r"through a hard link: 'cat/000.jpg' and 'dog/dup.jpg'"):
        ImageFolderSource(root)


def test_a_hard_link_on_two_csv_rows_is_refused(tmp_path):
    root = make_image_folder(tmp_path / "images", classes=("cat", "dog"), per_class=3)
    os.link(root / "cat" / "000.jpg", root / "copy.jpg")
    csv = root / "m.csv"
    csv.write_text("path,label,split\ncat/000.jpg,cat,train\ncat/001.jpg,cat,train\n"
                   "dog/000.jpg,dog,train\ncopy.jpg,cat,test\n")  # fmt: skip
    with pytest.raises(SourceError, match=r"line 5: path 'copy.jpg' .* hard links to one file"):
        CSVSource(csv)


def test_hard_links_from_outside_the_dataset_are_not_refused(tmp_path):
    # a file with two links, only one of them in the dataset (a `cp -al` snapshot), is one row
    root = make_image_folder(tmp_path / "images", classes=("cat", "dog"), per_class=3)
    os.link(root / "cat" / "000.jpg", tmp_path / "elsewhere.jpg")
    assert len(ImageFolderSource(root)) == 6
    (root / "m.csv").write_text("path,label\ncat/000.jpg,cat\ndog/000.jpg,dog\n")
    assert len(CSVSource(root / "m.csv")) == 2


def test_a_symlink_to_a_hard_linked_file_is_still_caught(tmp_path):
    root = make_image_folder(tmp_path / "images", classes=("cat", "dog"), per_class=3)
    os.link(root / "cat" / "000.jpg", tmp_path / "elsewhere.jpg")
    os.symlink(root / "cat" / "000.jpg", root / "dog" / "link.jpg")
    with pytest.raises(SourceError, match=r"through a symlink: 'cat/000.jpg' and 'dog/link.jpg'"):
        ImageFolderSource(root)


# -- folders that cannot be listed -----------------------------------------------------------


def test_an_unreadable_subfolder_of_a_class_is_not_skipped_silently(tmp_path, monkeypatch):
    # os.walk without onerror skipped it: the class lost its images and nothing said so
    root = make_image_folder(tmp_path / "images", classes=("cat", "dog"), per_class=3)
    make_image_folder(root / "cat", classes=("more",), per_class=3)
    assert len(ImageFolderSource(root)) == 9
    _refuse_listing(monkeypatch, "more")
    with pytest.raises(SourceError, match=r"Cannot list the folder '.*cat/more'.*chmod"):
        ImageFolderSource(root)


@pytest.mark.parametrize("name", ["dog", "images", "train"])
def test_an_unreadable_class_split_or_root_folder_is_one_line(tmp_path, monkeypatch, name):
    # a class folder was called empty ("contains no images"); the root or a split folder
    # raised a PermissionError traceback
    splits = ("train", "test") if name == "train" else None
    root = make_image_folder(tmp_path / "images", ("cat", "dog"), per_class=2, splits=splits)
    _refuse_listing(monkeypatch, name)
    with pytest.raises(SourceError, match=f"Cannot list the folder '.*{name}' \\(Permission"):
        ImageFolderSource(root)


def test_an_unreadable_folder_of_shards_is_not_skipped_silently(tmp_path, monkeypatch):
    # Path.rglob skipped it: wds:<folder> read 18 of 36 samples without a word
    _two_shard_folders(tmp_path)
    assert len(open_source(f"wds:{tmp_path / 'shards'}")) == 36
    _refuse_listing(monkeypatch, "part2")
    with pytest.raises(SourceError, match=r"Cannot list the folder '.*part2' \(Permission"):
        open_source(f"wds:{tmp_path / 'shards'}")


def test_an_unreadable_folder_of_parquet_files_is_not_skipped_silently(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    write_parquet_folder(tmp_path / "table")
    assert len(open_source(f"hf-dataset:{tmp_path / 'table'}?label=fine_label")) > 0
    _refuse_listing(monkeypatch, "data")
    with pytest.raises(SourceError, match=r"Cannot list the folder '.*data' \(Permission"):
        open_source(f"hf-dataset:{tmp_path / 'table'}?label=fine_label")


# -- CSV manifests ---------------------------------------------------------------------------


def test_a_csv_path_in_another_unicode_form_than_the_file_says_so(tmp_path):
    # 'é' as one code point in the CSV, as two in the file's name (copied from macOS): the file
    # was called missing though `ls` shows it
    root = make_image_folder(tmp_path / "images", classes=("cat", "dog"), per_class=2)
    os.rename(root / "cat" / "000.jpg", root / "cat" / "cafe\u0301.jpg")
    (root / "m.csv").write_text(
        "path,label\ncat/caf\u00e9.jpg,cat\ncat/001.jpg,cat\ndog/000.jpg,dog\n", encoding="utf-8"
    )
    with pytest.raises(SourceError, match=r"missing .* another Unicode form .*'NFD', path\)"):
        CSVSource(root / "m.csv")


# -- tables: rows without their image --------------------------------------------------------


def _table_of_paths(tmp_path, empty_row: int | None):
    """A parquet file of six rows holding image paths (row 4's file is missing) and, at
    ``empty_row``, no image at all (a null cell, as scraped datasets have)."""
    datasets = pytest.importorskip("datasets")
    for i in range(6):
        Image.new("RGB", (4, 4), (40 * i, 0, 0)).save(tmp_path / f"{i}.png")
    rows = [{"image": {"bytes": None, "path": f"{i}.png"}, "label": i % 2} for i in range(6)]
    if empty_row is not None:
        rows[empty_row]["image"] = None
    features = {"image": datasets.Image(decode=False), "label": datasets.ClassLabel(names="ab")}
    table = datasets.Dataset.from_list(rows, features=datasets.Features(features))
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(table.data.table, tmp_path / "t.parquet")
    (tmp_path / "4.png").unlink()
    return open_source(f"hf-dataset:{tmp_path / 't.parquet'}")


def test_a_table_row_without_an_image_is_skippable_like_an_unreadable_file(tmp_path):
    # it raised SourceError, which on_error="skip" does not skip (and under --workers the
    # message was DataLoader's traceback); --hash-contents ended in it too
    source = _table_of_paths(tmp_path, empty_row=2)
    assert source.path(2) is None
    with pytest.raises(ImageReadError, match=r"train/00002.*holds no image"):
        source.load(2)
    skipped = {"train/00002": "no image in the row", "train/00004": "file not found"}
    assert unreadable_images(source, "skip") == skipped
    assert unreadable_images(source, "skip", workers=1) == skipped
    assert source.fingerprint(content=True) != _table_of_paths(tmp_path, None).fingerprint(True)


def test_hash_contents_of_a_table_whose_image_file_is_missing_is_no_traceback(tmp_path):
    # FileNotFoundError came out of fingerprint(content=True); file sources record the row
    # as unreadable, and extraction then fails on it or skips it
    source = _table_of_paths(tmp_path, empty_row=None)
    assert len(source.fingerprint(content=True)) > 0
    with pytest.raises(ImageReadError, match=r"4\.png.*file not found"):
        source.read_bytes(4)


# -- specs -----------------------------------------------------------------------------------


def test_a_home_folder_after_a_prefix_is_expanded(tmp_path, monkeypatch):
    # the shell leaves ~ after 'hf-dataset:' or '@' as it is, and so does a pipeline file's
    # ~ expansion (only a leading ~ is): these were 'does not exist' while wds: expanded it
    pytest.importorskip("datasets")
    monkeypatch.setenv("HOME", str(tmp_path))
    make_image_folder(tmp_path / "images", classes=("cat", "dog"), per_class=2)
    write_parquet_folder(tmp_path / "table")
    assert len(open_source("~/images")) == 4
    assert len(open_source("hf-dataset:~/table?label=fine_label")) > 0
    where = re.escape(f"MNIST is not in '{tmp_path / 'tv'}'")
    with pytest.raises(SourceError, match=where):
        open_source("torchvision:MNIST@~/tv")
