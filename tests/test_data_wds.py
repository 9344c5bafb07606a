"""WebDataset shards (``wds:``): what is particular to them (the contract they share with
folders is in test_source_contract.py). Every test writes its own tiny shards."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import re
import shutil
import sys
import tarfile
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
from dataset_files import write_shards
from PIL import Image

from featpipe.cli import main
from featpipe.data import WebDatasetSource, open_source
from featpipe.data import shards as shards_module
from featpipe.errors import ConfigError, ImageReadError, MissingExtraError, SourceError
from featpipe.store import FeatureStore

pytest.importorskip("webdataset")

TOY = ["--backbone", "toy", "--workers", "0", "--device", "cpu", "--no-progress"]
NAMES = ["cat", "dog", "fox"]


def _pixels(i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    return (40 + 60 * (i % 3) + rng.integers(0, 50, (10, 12, 3))).astype(np.uint8)


def _encode(pixels: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def _samples(n: int, prefix: str = "", **extra) -> list[dict]:
    """``n`` samples keyed ``<prefix>00000``...: a PNG, an integer ``.cls`` and a ``.json``
    with the class name and ``extra``'s values (callables of the row)."""
    rows = []
    for i in range(n):
        info = {"label": NAMES[i % 3], **{k: f(i) for k, f in extra.items()}}
        rows.append(
            {"__key__": f"{prefix}{i:05d}", "png": _encode(_pixels(i), "PNG"), "cls": i % 3}
            | {"json": info}
        )
    return rows


@pytest.fixture
def shards(tmp_path):
    """10 samples in 3 shards of 4, 4 and 2: ``tmp_path/wds/shards-00000{0,1,2}.tar``."""
    write_shards(tmp_path / "wds", _samples(10), per_shard=4)
    return tmp_path / "wds"


BRACES = "shards-{000000..000002}.tar"


def test_keys_labels_and_rows(shards):
    source = open_source(f"wds:{shards}/{BRACES}")
    assert isinstance(source, WebDatasetSource) and len(source) == 10
    assert source.ids == [f"{i:05d}" for i in range(10)]  # the keys, unique over the shards
    assert source.classes == ["0", "1", "2"] and source.label_field.member == "cls"
    np.testing.assert_array_equal(source.labels, np.arange(10) % 3)
    assert source.split_counts() == {"train": 10, "val": 0, "test": 0}
    assert source.shard_starts() == [0, 4, 8]
    for row in (0, 5, 9):  # rows of each shard, read by index in any order
        np.testing.assert_array_equal(np.asarray(source.load(row)), _pixels(row))
    assert source.read_bytes(5) == _encode(_pixels(5), "PNG")
    assert source.describe()["shards"] == 3 and source.describe()["label"] == "cls"

    again = open_source(f"wds:{shards}")  # the folder: its .tar files, sorted
    assert again.ids == source.ids and again.fingerprint() == source.fingerprint()
    by_glob = open_source(f"wds:{shards}/shards-00000?.tar")  # "?" of a glob, not options
    assert by_glob.ids == source.ids
    parts = f"wds:{shards}/shards-000002.tar::{shards}/shards-000000.tar"
    assert open_source(parts).ids == source.ids[8:] + source.ids[:4]  # the order given


def test_labels_from_json_or_class_names_in_cls(tmp_path):
    samples = _samples(6)
    for i, s in enumerate(samples):
        s["cls"] = NAMES[i % 3]  # class names as text
        s["json"]["category"] = 7 * (i % 2)
    write_shards(tmp_path / "a", samples, per_shard=3)
    by_name = open_source(f"wds:{tmp_path / 'a'}")
    assert by_name.classes == NAMES and list(by_name.labels) == [0, 1, 2, 0, 1, 2]
    by_json = open_source(f"wds:{tmp_path / 'a'}?label=json:label")
    assert by_json.classes == NAMES and str(by_json.label_field) == "json:label"
    numbers = open_source(f"wds:{tmp_path / 'a'}?label=json:category")
    assert numbers.classes == [str(i) for i in range(8)] and list(numbers.labels[:2]) == [0, 7]

    for s in samples:
        del s["cls"]  # no .cls: json:label is the default
    write_shards(tmp_path / "b", samples, per_shard=3)
    assert open_source(f"wds:{tmp_path / 'b'}").classes == NAMES


def test_splits_from_a_json_field_the_shard_names_or_the_fractions(tmp_path):
    split = ["train", "train", "validation", "test"]
    write_shards(tmp_path / "a", _samples(12, split=lambda i: split[i % 4]), per_shard=5)
    source = open_source(f"wds:{tmp_path / 'a'}")
    assert str(source.split_field) == "json:split"
    assert source.split_counts() == {"train": 6, "val": 3, "test": 3}
    assert source.describe()["split"] == "json:split"

    write_shards(tmp_path / "b", _samples(6), per_shard=6, name="train")
    write_shards(tmp_path / "b", _samples(3, prefix="t"), per_shard=3, name="test")
    named = open_source(f"wds:{tmp_path / 'b'}", val_fraction=1 / 3)
    assert named.split_counts() == {"train": 4, "val": 2, "test": 3}
    assert all(named.ids[i].startswith("t") for i in named.indices("test"))

    with pytest.raises(SourceError, match=r"Sample '00000' .*: its json:nothing has none"):
        open_source(f"wds:{tmp_path / 'a'}?split=json:nothing")
    fractions = open_source(f"wds:{tmp_path / 'b'}/train-000000.tar", test_fraction=0.5, seed=3)
    assert fractions.split_counts() == {"train": 3, "val": 0, "test": 3}
    np.testing.assert_array_equal(
        open_source(f"wds:{tmp_path / 'b'}/train-000000.tar", test_fraction=0.5, seed=3).splits,
        fractions.splits,
    )


def test_a_split_anywhere_in_the_shard_names(tmp_path):
    write_shards(tmp_path / "a", _samples(6), per_shard=4, name="imagenet1k-train")
    write_shards(tmp_path / "a", _samples(4, prefix="v"), per_shard=4, name="imagenet1k-validation")
    source = open_source(f"wds:{tmp_path / 'a'}")
    assert source.split_counts() == {"train": 6, "val": 4, "test": 0}
    assert all(source.ids[i].startswith("v") for i in source.indices("val"))

    write_shards(tmp_path / "b", _samples(3), per_shard=3, name="data_train_val")
    with pytest.raises(SourceError, match=r"'data_train_val-000000.tar' names two splits"):
        open_source(f"wds:{tmp_path / 'b'}")

    # split-like names featpipe does not read: all train, but not silently
    write_shards(tmp_path / "c", _samples(6), per_shard=3, name="imagenet1k-trn")
    write_shards(tmp_path / "c", _samples(3, prefix="v"), per_shard=3, name="imagenet1k-eval")
    with pytest.warns(UserWarning, match=r"'eval', 'trn'.*read as train.*split=json:KEY"):
        unread = open_source(f"wds:{tmp_path / 'c'}")
    assert unread.split_counts() == {"train": 9, "val": 0, "test": 0}


def test_a_split_field_missing_from_the_first_sample_only_is_refused(tmp_path):
    samples = _samples(6, split=lambda i: "test" if i >= 4 else "train")
    del samples[0]["json"]["split"]
    write_shards(tmp_path / "a", samples, per_shard=6)
    with pytest.raises(SourceError, match=r"Sample '00000' .*: its json:split has none"):
        open_source(f"wds:{tmp_path / 'a'}")


def test_keys_repeated_across_shards_are_qualified_by_the_shard(tmp_path):
    root = tmp_path / "wds"
    for name in ("a", "b"):  # each writer counted its keys from 0
        write_shards(root / name, _samples(3), per_shard=3, name="part")
    source = open_source(f"wds:{root}")
    assert source.ids[:2] == ["a/part-000000/00000", "a/part-000000/00001"]
    assert source.ids[3] == "b/part-000000/00000" and len(set(source.ids)) == 6
    assert open_source(f"wds:{root}").ids == source.ids


def test_jpeg_webp_and_the_image_member_chosen(tmp_path):
    pixels = _pixels(1)
    jpg, webp = _encode(pixels, "JPEG"), _encode(pixels, "WEBP")
    samples = [
        {"__key__": "a", "jpg": jpg, "cls": 0},
        {"__key__": "b", "webp": webp, "cls": 1},
        {"__key__": "c", "jpg": jpg, "png": _encode(pixels, "PNG"), "cls": 1},
    ]
    write_shards(tmp_path / "wds", samples, per_shard=3)
    source = open_source(f"wds:{tmp_path / 'wds'}")
    assert [source.read_bytes(i) for i in (0, 1, 2)] == [jpg, webp, jpg]  # jpg before png
    assert all(source.load(i).size == (12, 10) for i in range(3))
    png_first = open_source(f"wds:{tmp_path / 'wds'}?image=png,jpg,webp")
    assert png_first.read_bytes(2)[:4] == b"\x89PNG" and png_first.read_bytes(0) == jpg


def test_fingerprint_is_stable_and_follows_the_shards(shards):
    spec = f"wds:{shards}"
    source = open_source(spec)
    base, content = source.fingerprint(), source.fingerprint(content=True)
    assert open_source(spec).fingerprint() == base
    assert open_source(spec).fingerprint(content=True) == content

    path = shards / "shards-000001.tar"
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: same bytes
    assert open_source(spec).fingerprint() != base
    assert open_source(spec).fingerprint(content=True) == content

    samples = _samples(10)
    samples[5]["png"] = _encode(_pixels(5) ^ 1, "PNG")  # one image of the middle shard
    write_shards(shards, samples, per_shard=4)
    changed = open_source(spec)
    assert changed.ids == source.ids and changed.fingerprint(content=True) != content


def test_fingerprint_is_the_same_however_the_path_is_spelt_or_moved(shards, monkeypatch):
    base = open_source(f"wds:{shards}").fingerprint()
    monkeypatch.chdir(shards.parent)
    assert open_source("wds:wds").fingerprint() == base
    assert open_source("wds:./wds/").fingerprint() == base
    assert open_source("wds:wds/shards-{000000..000002}.tar").fingerprint() == base
    mixed = f"wds:wds/shards-{{000000..000001}}.tar::{shards}/shards-000002.tar"
    assert open_source(mixed).fingerprint() == base  # a relative and an absolute part
    shards.rename(shards.parent / "moved")  # keeps the files' mtimes, as a folder source
    assert open_source("wds:moved").fingerprint() == base


def test_extract_end_to_end_with_the_toy_backbone(shards, tmp_path, capsys):
    spec = f"wds:{shards}/{BRACES}"
    args = ["extract", spec, *TOY, "--cache-dir", str(tmp_path / "cache"), "--batch-size", "3"]
    assert main([*args, "--layers", "pooled", "--test-fraction", "0.3"]) == 0
    out = capsys.readouterr().out
    path = re.search(r"features written to (\S+)", out).group(1)
    assert "/wds-toy-" in path  # named after the shards' folder
    store = FeatureStore(path)
    source = open_source(spec, test_fraction=0.3)
    assert store.complete and store.ids() == source.ids
    assert store.split_counts() == source.split_counts() == {"train": 7, "val": 0, "test": 3}
    X, y = store.arrays("pooled")
    assert X.shape == (10, 32) and np.isfinite(X).all() and len(np.unique(X, axis=0)) == 10
    np.testing.assert_array_equal(y, source.labels)
    assert main([*args, "--layers", "pooled", "--test-fraction", "0.3"]) == 0
    assert "reused cached store" in capsys.readouterr().out


def test_the_source_pickles_and_reads_again(shards):
    source = open_source(f"wds:{shards}")
    source.load(0)
    again = pickle.loads(pickle.dumps(source))
    np.testing.assert_array_equal(np.asarray(again.load(6)), np.asarray(source.load(6)))


def test_many_shards_are_indexed_in_a_pool_like_in_one_process(tmp_path, monkeypatch):
    write_shards(tmp_path / "wds", _samples(17), per_shard=2)  # 9 shards
    pools = []

    class Pool(ProcessPoolExecutor):
        def __init__(self, workers):
            pools.append(workers)
            super().__init__(workers)

    monkeypatch.setattr(shards_module, "available_cores", lambda: 2)
    monkeypatch.setattr(shards_module, "ProcessPoolExecutor", Pool)
    pooled = open_source(f"wds:{tmp_path / 'wds'}")
    assert pools == [2]
    monkeypatch.setattr(shards_module, "_POOL_MIN_SHARDS", 10**9)
    alone = open_source(f"wds:{tmp_path / 'wds'}")
    assert pooled.ids == alone.ids and pooled.fingerprint() == alone.fingerprint()
    np.testing.assert_array_equal(pooled._offsets, alone._offsets)
    assert pooled.shard_starts() == list(range(0, 17, 2))


def test_missing_and_misnamed_shards(shards, tmp_path):
    with pytest.raises(SourceError, match=r"2 of the 5 shards .* do not exist: .*shards-000003"):
        open_source(f"wds:{shards}/shards-{{000000..000004}}.tar")
    with pytest.raises(SourceError, match=r"No shards match"):
        open_source(f"wds:{shards}/other-*.tar")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match=r"holds no \.tar shards"):
        open_source(f"wds:{tmp_path / 'empty'}")
    zipped = shards / "extra.zip"
    zipped.write_bytes(b"PK")
    with pytest.raises(SourceError, match=r"unknown extension '\.zip'.*uncompressed \.tar"):
        open_source(f"wds:{zipped}")
    packed = shards / "shards-000000.tar.gz"
    packed.write_bytes(gzip.compress((shards / "shards-000000.tar").read_bytes()))
    with pytest.raises(SourceError, match=r"is compressed.*Decompress it"):
        open_source(f"wds:{packed}")
    with pytest.raises(ConfigError, match=r"not a local file"):
        open_source("wds:https://example.com/shards-{000000..000009}.tar")
    with pytest.raises(SourceError, match=r"listed twice"):
        open_source(f"wds:{shards}/shards-000000.tar::{shards}/shards-000000.tar")


def test_damaged_shards_and_samples(tmp_path, shards):
    truncated = tmp_path / "cut" / "shards-000000.tar"
    truncated.parent.mkdir()
    truncated.write_bytes((shards / "shards-000000.tar").read_bytes()[:1500])
    with pytest.raises(SourceError, match=r"Cannot read shard .*cut.*: truncated header"):
        open_source(f"wds:{truncated}")
    whole = (shards / "shards-000000.tar").read_bytes()
    with tarfile.open(shards / "shards-000000.tar") as tar:  # cut where sample 00002 begins
        cut = next(m.offset for m in tar.getmembers() if m.name.startswith("00002."))
    truncated.write_bytes(whole[:cut])  # tarfile alone would read 2 samples and stop
    with pytest.raises(SourceError, match=r"is truncated: it stops after 2 samples"):
        open_source(f"wds:{truncated}")

    no_image = _samples(3)
    del no_image[1]["png"]
    no_image[1]["heic"] = b"\0\0\0 ftypheic"
    write_shards(tmp_path / "a", no_image, per_shard=3)
    with pytest.raises(SourceError, match=r"Sample '00001' of shard .* has no image: .*\.heic"):
        open_source(f"wds:{tmp_path / 'a'}")
    with pytest.raises(ConfigError, match=r"Unknown image extension 'heic'"):
        open_source(f"wds:{tmp_path / 'a'}?image=heic")

    no_label = _samples(3)
    del no_label[2]["cls"]
    write_shards(tmp_path / "b", no_label, per_shard=3)
    with pytest.raises(SourceError, match=r"Sample '00002' of shard .*: its cls has none"):
        open_source(f"wds:{tmp_path / 'b'}")
    for s in no_label:
        s.pop("cls", None)
        s.pop("json")
    write_shards(tmp_path / "c", no_label, per_shard=3)
    with pytest.raises(SourceError, match=r"No sample .* has a label: no \.cls.*\?label=json:KEY"):
        open_source(f"wds:{tmp_path / 'c'}")

    mixed = _samples(4)
    mixed[3]["cls"] = "dog"
    write_shards(tmp_path / "d", mixed, per_shard=4)
    with pytest.raises(SourceError, match=r"mix integers and class names"):
        open_source(f"wds:{tmp_path / 'd'}")

    bad_split = _samples(4, split=lambda i: "holdout" if i == 3 else "train")
    write_shards(tmp_path / "e", bad_split, per_shard=4)
    with pytest.raises(SourceError, match=r"unknown split 'holdout'"):
        open_source(f"wds:{tmp_path / 'e'}")


def test_a_key_in_two_places_of_one_shard(tmp_path):
    path = tmp_path / "shards-000000.tar"
    png = _encode(_pixels(0), "PNG")
    with tarfile.open(path, "w") as tar:
        for name, data in [("a.png", png), ("a.cls", b"0"), ("b.png", png), ("a.txt", b"x")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(SourceError, match=r"has the key 'a' in two places"):
        open_source(f"wds:{path}")


def test_options_are_checked(shards):
    with pytest.raises(ConfigError, match=r"Unknown option 'lable'.*Did you mean: 'label'"):
        open_source(f"wds:{shards}?lable=cls")
    with pytest.raises(ConfigError, match=r"label='json' names the json member but no key"):
        open_source(f"wds:{shards}?label=json")
    with pytest.raises(ConfigError, match=r"label='png' cannot hold a label"):
        open_source(f"wds:{shards}?label=png")


def test_a_row_whose_shard_went_away_is_an_image_read_error(tmp_path, shards):
    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    source = open_source(f"wds:{copy}")
    (copy / "shards-000001.tar").unlink()
    with pytest.raises(ImageReadError, match=r"shards-000001\.tar \[00004\]'.*file not found"):
        source.load(4)
    np.testing.assert_array_equal(np.asarray(source.load(0)), _pixels(0))


def test_a_missing_library_names_the_extra(shards, monkeypatch):
    monkeypatch.setitem(sys.modules, "webdataset", None)  # as if not installed
    with pytest.raises(MissingExtraError, match=r'pip install "featpipe\[wds\]"'):
        open_source(f"wds:{shards}")
