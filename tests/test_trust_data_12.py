"""Trust sweep of the data sources (session 13, round 4): partial downloads in a class folder,
glob patterns of shards over a folder that cannot be listed, and text labels with a byte-order
mark. An unreadable folder is simulated by failing os.scandir for it (tests run as root)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from conftest import make_image_folder
from dataset_files import write_shards, write_wds_dataset
from PIL import Image
from test_trust_data_11 import _refuse_listing, _two_shard_folders

from featpipe.data import ArraySource, ImageFolderSource, open_source
from featpipe.data.splits import subsample
from featpipe.errors import SourceError

# -- partial downloads -----------------------------------------------------------------------


def test_partial_downloads_in_a_class_folder_are_named_in_the_warning(tmp_path):
    # a.jpg.part (Firefox), b.jpg.crdownload (Chrome): images missing from the set, left out
    # without a word while a .jfif beside them was warned of
    root = make_image_folder(tmp_path / "images", classes=("cat", "dog"), per_class=2)
    for name in ("a.jpg.part", "b.jpg.crdownload"):
        (root / "cat" / name).write_bytes(b"\xff\xd8\xff")
    with pytest.warns(UserWarning, match=r"leaves out 2 partial downloads \(cat/a\.jpg\.part, "
                      r"cat/b\.jpg\.crdownload\): finish or repeat"):  # fmt: skip
        assert len(ImageFolderSource(root)) == 4


def test_partial_downloads_and_other_photos_share_one_warning(tmp_path):
    root = make_image_folder(tmp_path / "images", classes=("cat", "dog"), per_class=2)
    Image.new("RGB", (4, 4)).save(root / "dog" / "c.jfif", format="JPEG")
    (root / "dog" / "d.png.TMP").write_bytes(b"")
    with pytest.warns(UserWarning) as caught:
        ImageFolderSource(root)
    [message] = [str(w.message) for w in caught if "leaves out" in str(w.message)]
    assert "leaves out 1 .jfif file: featpipe reads" in message
    assert "; and 1 partial download (dog/d.png.TMP)" in message


def test_a_folder_without_left_out_files_still_does_not_warn(tmp_path):
    root = make_image_folder(tmp_path / "images", classes=("cat", "dog"), per_class=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(ImageFolderSource(root)) == 4


# -- wds: glob patterns ----------------------------------------------------------------------


@pytest.mark.parametrize("pattern", ["**/*.tar", "*/*.tar", "part*/train-*.tar"])
def test_a_shard_pattern_over_an_unreadable_folder_is_not_skipped_silently(
    tmp_path, monkeypatch, pattern
):
    # glob.glob skips a folder it cannot list: 18 of 36 samples were read without a word
    _two_shard_folders(tmp_path)
    spec = f"wds:{tmp_path / 'shards' / pattern}"
    assert len(open_source(spec)) == (24 if "train" in pattern else 36)
    _refuse_listing(monkeypatch, "part2")
    with pytest.raises(SourceError, match=r"Cannot list the folder '.*part2' \(Permission"):
        open_source(spec)


def test_a_shard_pattern_does_not_refuse_folders_it_does_not_list(tmp_path, monkeypatch):
    # only folders the pattern lists count: a plain name in them is looked up, and folders the
    # pattern does not reach (lost+found beside the shards) are no concern of it
    _two_shard_folders(tmp_path)
    (tmp_path / "shards" / "lost+found").mkdir()
    _refuse_listing(monkeypatch, "lost+found")
    assert len(open_source(f"wds:{tmp_path / 'shards' / 'part*' / '*.tar'}")) == 36
    _refuse_listing(monkeypatch, "part2")
    assert len(open_source(f"wds:{tmp_path / 'shards' / 'part*' / 'train-000000.tar'}")) == 8


# -- text labels with a byte-order mark ------------------------------------------------------


def _png(value: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (4, 4), (value, 0, 0)).save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize("bom_on", ["every", "some"])
def test_a_cls_label_with_a_byte_order_mark_is_its_number(tmp_path, bom_on):
    # Notepad's BOM made "3" the class name "\ufeff3": classes sorted as text (10 before 2, so
    # other indices than the numbers), or a mix of integers and names refused
    pytest.importorskip("webdataset")
    labels = [j % 12 for j in range(24)]
    samples = [
        {
            "__key__": f"{j:03d}",
            "png": _png(j),
            "cls": ("\ufeff" if bom_on == "every" or j % 2 else "") + str(y),
            "json": "\ufeff" + '{"split": "%s"}' % ("train" if j < 18 else "test"),
        }
        for j, y in enumerate(labels)
    ]
    write_shards(tmp_path / "shards", samples, per_shard=24)
    source = open_source(f"wds:{tmp_path / 'shards'}")
    assert source.classes == [str(c) for c in range(12)]
    assert source.labels.tolist() == labels
    assert (source.splits == 2).sum() == 6


# -- splits ----------------------------------------------------------------------------------


def test_subsample_keeps_the_same_rows_whatever_the_order_of_the_limits():
    # one generator draws every split in turn: {test = 5, train = 10} (a config's key order)
    # kept other train and test rows than {train = 10, test = 5}
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (60, 4, 4, 3), dtype=np.uint8)
    source = ArraySource(images, np.arange(60) % 3, splits=["train"] * 40 + ["test"] * 20)
    first = subsample(source, {"train": 10, "test": 5}, seed=0).ids
    assert subsample(source, {"test": 5, "train": 10}, seed=0).ids == first


def test_a_home_folder_in_a_shard_pattern_is_expanded(tmp_path, monkeypatch):
    # wds:~/shards expanded ~, but wds:~/shards/*.tar globbed a literal '~': "No shards match"
    pytest.importorskip("webdataset")
    write_wds_dataset(tmp_path / "shards")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert len(open_source("wds:~/shards/*.tar")) == 18
