"""The contract every image source keeps, checked on each kind of source opened by spec:
stable ids, fingerprints, splits (val carved from train), RGB pixels and resumable extraction.

Each case writes a tiny dataset with train and test splits in its library's own on-disk
format (see ``dataset_files``); nothing is downloaded.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image_folder
from dataset_files import (
    write_cifar,
    write_hf_dataset,
    write_mnist,
    write_parquet_folder,
    write_wds_dataset,
)
from extract_child import read_features
from PIL import Image

from featpipe.data import open_source
from featpipe.errors import ImageReadError
from featpipe.extract import extract


@dataclass
class Case:
    spec: str
    first: list[np.ndarray]  # the RGB pixels of the first rows (empty: lossy JPEGs)


def _folder(root: Path, monkeypatch, bump: int) -> Case:
    if not root.exists():
        make_image_folder(root, per_class=4, splits=("train", "test"))
    if bump:
        img = np.asarray(Image.open(root / "train" / "cat" / "000.jpg")).copy()
        img[0, 0, 0] ^= 255
        Image.fromarray(img).save(root / "train" / "cat" / "000.jpg")
    return Case(str(root), [])


def _cifar(hundred: bool):
    def make(root: Path, monkeypatch, bump: int) -> Case:
        images = write_cifar(root, monkeypatch, hundred=hundred, bump=bump)
        name = "CIFAR100" if hundred else "CIFAR10"
        return Case(f"torchvision:{name}@{root}", [images["train"][0]])

    return make


def _mnist(name: str):
    def make(root: Path, monkeypatch, bump: int) -> Case:
        images = write_mnist(root, name, bump=bump)
        gray = images["train"][0]
        return Case(f"torchvision:{name}@{root}", [np.dstack([gray] * 3)])

    return make


def _hf(root: Path, monkeypatch, bump: int) -> Case:
    shutil.rmtree(root, ignore_errors=True)
    expected = write_hf_dataset(root, bump=bump, splits=("train", "test"))
    return Case(f"hf-dataset:{root}?label=fine_label", list(expected["train"][:3]))


def _parquet(root: Path, monkeypatch, bump: int) -> Case:
    shutil.rmtree(root, ignore_errors=True)
    expected = write_parquet_folder(root, bump=bump, splits=("train", "test"))
    return Case(f"hf-dataset:{root}?image=img&label=fine_label", list(expected["train"][:3]))


def _wds(root: Path, monkeypatch, bump: int) -> Case:
    shutil.rmtree(root, ignore_errors=True)
    expected = write_wds_dataset(root, bump=bump, splits=("train", "test"))
    # train shards first (a folder lists test-000000.tar first); splits from the shard names
    shards = "{train-000000,train-000001,train-000002,test-000000,test-000001}"
    return Case(f"wds:{root}/{shards}.tar", list(expected["train"][:3]))


CASES = {
    "folder": _folder,
    "torchvision-CIFAR10": _cifar(hundred=False),
    "torchvision-CIFAR100": _cifar(hundred=True),
    "torchvision-MNIST": _mnist("MNIST"),
    "torchvision-FashionMNIST": _mnist("FashionMNIST"),
    "hf-dataset": _hf,
    "parquet": _parquet,
    "webdataset": _wds,
}


@pytest.fixture(params=list(CASES))
def make_case(request, tmp_path, monkeypatch):
    """``make_case(bump=0)`` writes the dataset (again, with one pixel changed by ``bump``)."""
    if request.param in ("hf-dataset", "parquet"):
        pytest.importorskip("datasets")
    if request.param == "webdataset":
        pytest.importorskip("webdataset")
    make = CASES[request.param]
    return lambda bump=0: make(tmp_path / "data", monkeypatch, bump)


def test_ids_labels_and_splits_are_stable(make_case):
    spec = make_case().spec
    a, b = open_source(spec), open_source(spec)
    assert a.ids == b.ids and a.classes == b.classes
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.splits, b.splits)
    assert len(set(a.ids)) == len(a) and all(isinstance(i, str) for i in a.ids)
    for split in ("train", "test"):  # ids name the dataset's own split
        assert all(a.ids[i].startswith(f"{split}/") for i in a.indices(split))
    counts = a.split_counts()
    assert counts["train"] > 0 and counts["test"] > 0 and counts["val"] == 0
    assert a.labels.dtype == np.int64 and 0 <= a.labels.min() <= a.labels.max() < len(a.classes)


def test_fingerprint_follows_images_and_splits(make_case):
    spec = make_case().spec
    source = open_source(spec)
    base, base_content = source.fingerprint(), source.fingerprint(content=True)
    assert open_source(spec).fingerprint() == base
    assert open_source(spec).fingerprint(content=True) == base_content
    assert open_source(spec, val_fraction=0.25).fingerprint() != base

    make_case(bump=1)  # one pixel of one training image changes
    changed = open_source(spec)
    assert changed.ids == source.ids
    assert changed.fingerprint(content=True) != base_content
    assert changed.fingerprint() != base


def test_val_is_carved_from_train_seeded_and_stratified(make_case):
    spec = make_case().spec
    whole = open_source(spec)
    source = open_source(spec, val_fraction=0.25, seed=1)
    counts, before = source.split_counts(), whole.split_counts()
    assert counts["val"] == round(before["train"] * 0.25) and counts["test"] == before["test"]
    val = source.indices("val")
    assert all(source.ids[i].startswith("train/") for i in val)
    per_class = np.bincount(source.labels[val], minlength=len(source.classes))
    train_per_class = np.bincount(whole.labels[whole.indices("train")], minlength=len(per_class))
    assert np.all(np.abs(per_class - train_per_class * 0.25) <= 1)
    np.testing.assert_array_equal(
        open_source(spec, val_fraction=0.25, seed=1).splits, source.splits
    )
    with pytest.warns(UserWarning, match=r"test_fraction=0.2 is ignored"):
        open_source(spec, test_fraction=0.2)


def test_images_are_rgb(make_case):
    case = make_case()
    source = open_source(case.spec)
    for i in range(len(source)):
        assert source.load(i).mode == "RGB"
    for i, expected in enumerate(case.first):
        np.testing.assert_array_equal(np.asarray(source.load(i)), expected)


def test_a_failed_extraction_resumes_to_the_features_of_a_full_run(make_case, tmp_path):
    spec = make_case().spec
    options = dict(workers=0, device="cpu", progress=False, batch_size=5, dtype="float32")
    layers = ["pooled", "stage1:avg"]
    failing = open_source(spec)
    load = failing.load

    def broken(index: int):
        if index == 7:
            raise ImageReadError("Cannot read image 'row 7': broken")
        return load(index)

    failing.load = broken
    out = tmp_path / "resumed.h5"
    with pytest.raises(ImageReadError):
        extract(failing, "toy", layers, out=out, **options)
    resumed = extract(open_source(spec), "toy", layers, out=out, **options)
    chunks = -(-len(failing) // 5)
    assert resumed.extraction["resumed"] and resumed.extraction["computed_chunks"] == chunks - 1
    full = extract(open_source(spec), "toy", layers, out=tmp_path / "full.h5", **options)
    a, b = read_features(out), read_features(full.path)
    assert all(np.array_equal(a[k], b[k]) for k in layers)
    assert full.ids() == open_source(spec).ids
