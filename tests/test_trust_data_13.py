"""Trust sweep of the data sources (session 14): a fraction that carves no row, limits of one
split that changed the rows kept of another, and shards or parquet files in hidden folders."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
from dataset_files import write_parquet_folder, write_wds_dataset

from featpipe.data import ArraySource, open_source
from featpipe.data.splits import subsample
from featpipe.errors import SourceError


def _arrays(counts: list[int], **kwargs) -> ArraySource:
    labels = np.repeat(np.arange(len(counts)), counts)
    images = np.zeros((len(labels), 4, 4, 3), dtype=np.uint8)
    return ArraySource(images, labels, **kwargs)


def _no_warning(make):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return make()


# -- a fraction that carves no row -----------------------------------------------------------


@pytest.mark.parametrize(
    ("counts", "val", "test", "said"),
    [
        ([5, 4], 0.05, 0.0, r"val_fraction=0\.05 carved no val row from the 9 train rows .* "
         r"rounds to 0\)\. Use a val_fraction of at least 0\.06"),
        ([2, 2], 0.2, 0.2, r"val_fraction=0\.2 carved no val row from the 4 train rows .*"
         r"every class keeps a train row.*Use more train images"),
    ],
)  # fmt: skip
def test_a_fraction_that_carves_no_row_warns_once(counts, val, test, said):
    # 9 x 0.05 rounds to 0, and 2+2 rows give val's row to test: no val row without a word
    with pytest.warns(UserWarning) as caught:
        source = _arrays(counts, val_fraction=val, test_fraction=test, seed=0)
    assert source.split_counts()["val"] == 0
    [message] = [str(w.message) for w in caught if "carved no" in str(w.message)]
    assert __import__("re").search(said, message), message
    assert "\n" not in message


def test_fractions_that_carve_rows_do_not_warn():
    source = _no_warning(lambda: _arrays([10, 10], val_fraction=0.1, test_fraction=0.2))
    assert source.split_counts() == {"train": 14, "val": 2, "test": 4}
    _no_warning(lambda: _arrays([5, 4]))  # no fraction asked: nothing to warn of


# -- one generator per split -----------------------------------------------------------------


def test_the_rows_kept_of_one_split_do_not_depend_on_another_splits_limit():
    # one generator drew the splits in turn: adding a val limit changed which test rows a
    # test limit kept (and a train limit at or above the train size changed them too)
    source = _arrays([30, 30], val_fraction=0.25, test_fraction=0.25, seed=0)

    def test_ids(limits):
        kept = subsample(source, limits, seed=3)
        return [kept.ids[r] for r in kept.indices("test")]

    alone = test_ids({"test": 6})
    assert test_ids({"val": 4, "test": 6}) == alone
    assert test_ids({"train": 10, "test": 6}) == alone
    assert test_ids({"train": 1000, "test": 6}) == alone
    assert len(alone) == 6


# -- hidden folders of shards and parquet files ----------------------------------------------


def test_shards_in_a_hidden_folder_are_left_out_with_a_warning(tmp_path):
    # files_under read .Trash-1000/*.tar while the image-folder scan skips hidden folders
    pytest.importorskip("webdataset")
    write_wds_dataset(tmp_path / "shards")
    shutil.copytree(tmp_path / "shards", tmp_path / "shards" / ".Trash-1000" / "files")
    with pytest.warns(UserWarning, match=r"leaves out 5 \.tar files in a hidden folder "
                      r"\(\.Trash-1000/files\)"):  # fmt: skip
        source = open_source(f"wds:{tmp_path / 'shards'}")
    assert len(source) == 18
    # a folder of shards that is itself in a hidden folder is read as given
    inside = tmp_path / "shards" / ".Trash-1000" / "files"
    assert len(_no_warning(lambda: open_source(f"wds:{inside}"))) == 18


def test_parquet_files_in_a_hidden_folder_are_left_out_with_a_warning(tmp_path):
    pytest.importorskip("datasets")
    write_parquet_folder(tmp_path / "table")
    n = len(open_source(f"hf-dataset:{tmp_path / 'table'}?label=fine_label"))
    shutil.copytree(tmp_path / "table" / "data", tmp_path / "table" / ".cache" / "data")
    with pytest.warns(UserWarning, match=r"in a hidden folder \(\.cache/data\)"):
        assert len(open_source(f"hf-dataset:{tmp_path / 'table'}?label=fine_label")) == n


# -- arrays with missing labels --------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "shown"),
    [
        ([0, 1, None, 1], "None"),
        (["a", "b", "", "b"], "''"),
        (["a", "b", float("nan"), "b"], "nan"),
    ],
)
def test_an_array_label_that_is_missing_is_refused_not_a_class(labels, shown):
    # None became class 'None', '' class '', NaN (a pandas column's) class 'nan': heads learnt
    # them and reports counted them, where tables and CSVs refuse such rows
    images = np.zeros((4, 4, 4, 3), dtype=np.uint8)
    with pytest.raises(SourceError, match=rf"1 image has no label .* row 2, {shown}\)"):
        ArraySource(images, np.asarray(labels, dtype=object))
    assert ArraySource(images, ["a", "b", "nan", "b"]).classes == ["a", "b", "nan"]  # a name
