"""Hugging Face datasets saved to disk and parquet: what is particular to them (the contract
they share with folders is in test_source_contract.py)."""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest
from dataset_files import HF_CLASSES, hf_dataset, write_hf_dataset, write_parquet_folder

from featpipe.data import HFDatasetSource, ParquetSource, open_source
from featpipe.errors import ConfigError, MissingExtraError, SourceError

datasets = pytest.importorskip("datasets")


def test_hf_splits_columns_and_class_names(tmp_path):
    write_hf_dataset(tmp_path / "ds")
    source = open_source(f"hf-dataset:{tmp_path / 'ds'}?label=fine_label")
    assert isinstance(source, HFDatasetSource)
    assert source.classes == HF_CLASSES and source.image_column == "img"
    assert source.split_counts() == {"train": 12, "val": 6, "test": 6}  # validation -> val
    assert source.ids[12] == "validation/00000" and source.ids[-1] == "test/00005"
    coarse = open_source(f"hf-dataset:{tmp_path / 'ds'}?label=coarse_label")
    assert coarse.classes == ["pet", "wild"]


def test_hf_columns_are_detected_or_refused_with_the_choices(tmp_path):
    data, _ = hf_dataset(splits=("train", "test"))
    data.remove_columns("coarse_label").save_to_disk(str(tmp_path / "one"))
    auto = open_source(str(tmp_path / "one"))  # a save_to_disk folder needs no prefix
    assert isinstance(auto, HFDatasetSource) and auto.label_column == "fine_label"
    data.save_to_disk(str(tmp_path / "two"))
    with pytest.raises(SourceError, match=r"several label columns \(fine_label, coarse_label\)"):
        open_source(f"hf-dataset:{tmp_path / 'two'}")
    with pytest.raises(SourceError, match=r"no column 'fine'.*Did you mean: 'fine_label'"):
        open_source(f"hf-dataset:{tmp_path / 'two'}?label=fine")
    with pytest.raises(SourceError, match=r"'fine_label' .* holds int64, not encoded images"):
        open_source(f"hf-dataset:{tmp_path / 'two'}?image=fine_label&label=fine_label")
    with pytest.raises(ConfigError, match=r"Unknown option 'lable'.*Did you mean: 'label'"):
        open_source(f"hf-dataset:{tmp_path / 'two'}?lable=fine_label")


def test_hf_splits_that_cannot_be_used(tmp_path):
    data, _ = hf_dataset(splits=("train", "test"))
    data = data.remove_columns("coarse_label")
    extra = datasets.DatasetDict({**data, "unsupervised": data["test"]})
    extra.save_to_disk(str(tmp_path / "extra"))
    with pytest.warns(UserWarning, match=r"split 'unsupervised' is left out"):
        assert len(open_source(str(tmp_path / "extra"))) == 18
    datasets.DatasetDict({"test": data["test"], "validation": data["test"]}).save_to_disk(
        str(tmp_path / "no_train")
    )
    with pytest.raises(SourceError, match="has no train split"):
        open_source(str(tmp_path / "no_train"))
    unlabelled = datasets.DatasetDict(
        {"train": data["train"], "test": data["test"].map(lambda row: {"fine_label": -1})}
    )
    unlabelled.save_to_disk(str(tmp_path / "unlabelled"))
    with pytest.raises(SourceError, match=r"rows without a label \(None, NaN, -1 or empty\)"):
        open_source(str(tmp_path / "unlabelled"))


def test_hf_split_names_are_read_in_any_case(tmp_path):
    # A DatasetDict saved with "Train"/"Validation" was warned about and all of it left out.
    data, _ = hf_dataset(splits=("train", "validation", "test"))
    data = data.remove_columns("coarse_label")
    named = datasets.DatasetDict({k.capitalize(): v for k, v in data.items()})
    named.save_to_disk(str(tmp_path / "capitals"))
    source = open_source(str(tmp_path / "capitals"))
    assert source.split_counts() == {"train": 12, "val": 6, "test": 6}


def test_a_single_dataset_is_all_train_and_split_by_fractions(tmp_path):
    data, _ = hf_dataset(splits=("train",))
    data["train"].save_to_disk(str(tmp_path / "ds"))
    source = open_source(f"hf-dataset:{tmp_path / 'ds'}?label=fine_label", test_fraction=0.25)
    assert source.split_counts() == {"train": 9, "val": 0, "test": 3}


def test_parquet_file_and_hub_folder(tmp_path):
    write_parquet_folder(tmp_path / "hub")
    folder = open_source(f"hf-dataset:{tmp_path / 'hub'}?label=fine_label")
    assert isinstance(folder, ParquetSource) and folder.classes == HF_CLASSES
    assert folder.split_counts() == {"train": 12, "val": 6, "test": 6}
    assert folder.split_names == ["train", "validation", "test"]
    one = tmp_path / "hub" / "data" / "train-00000-of-00001.parquet"
    single = open_source(f"hf-dataset:{one}?label=fine_label", val_fraction=0.25)
    assert single.split_counts() == {"train": 9, "val": 3, "test": 0}
    data, _ = hf_dataset(splits=("train",))
    data["train"].remove_columns("coarse_label").to_parquet(str(tmp_path / "plain.parquet"))
    bare = open_source(str(tmp_path / "plain.parquet"))  # a .parquet path needs no prefix
    assert isinstance(bare, ParquetSource) and bare.label_column == "fine_label"


def test_parquet_split_anywhere_in_the_file_names(tmp_path):
    data, _ = hf_dataset(splits=("train", "test"))
    for split, ds in data.items():
        ds.to_parquet(str(tmp_path / "pq" / f"cifar-{split}-00000-of-00001.parquet"))
    source = open_source(f"hf-dataset:{tmp_path / 'pq'}?label=fine_label")
    assert source.split_counts() == {"train": 12, "val": 0, "test": 6}


@pytest.mark.parametrize("layout", ["parquet", "save_to_disk"])
def test_table_fingerprint_is_the_same_however_the_path_is_spelt_or_moved(
    tmp_path, monkeypatch, layout
):
    write = write_parquet_folder if layout == "parquet" else write_hf_dataset
    write(tmp_path / "ds")
    base = open_source(f"hf-dataset:{tmp_path / 'ds'}?label=fine_label").fingerprint()
    monkeypatch.chdir(tmp_path)
    assert open_source("hf-dataset:ds?label=fine_label").fingerprint() == base
    (tmp_path / "ds").rename(tmp_path / "moved")  # keeps the files' mtimes
    assert open_source("hf-dataset:./moved/?label=fine_label").fingerprint() == base


def test_table_sources_pickle_without_their_images(tmp_path):
    write_hf_dataset(tmp_path / "ds")
    source = open_source(f"hf-dataset:{tmp_path / 'ds'}?label=fine_label")
    source.load(3)  # the arrow columns are open now
    blob = pickle.dumps(source)
    assert len(blob) < 4000  # DataLoader workers reopen the memory-mapped files
    again = pickle.loads(blob)
    np.testing.assert_array_equal(np.asarray(again.load(3)), np.asarray(source.load(3)))
    assert again.read_bytes(3) == source.read_bytes(3) and again.read_bytes(3)[:4] == b"\x89PNG"


def test_a_missing_library_names_the_extra(tmp_path, monkeypatch):
    write_hf_dataset(tmp_path / "ds")
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    with pytest.raises(MissingExtraError, match=r'pip install "featpipe\[datasets\]"'):
        open_source(f"hf-dataset:{tmp_path / 'ds'}")
