"""Round-2 review fixes: one completeness refusal, probe's run-dir line, predict's HEAD
folder, a second writer of one store path."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_chunked_store, python_child

from featpipe.cli import main
from featpipe.errors import IncompleteStoreError, StoreInUseError
from featpipe.store import FeatureStore, write_arrays
from featpipe.store.export import export_features


@pytest.fixture
def chunked(tmp_path):
    """A complete 40-row store (train 20, test 20) of one layer, 'pooled'."""
    path = tmp_path / "s.h5"
    make_chunked_store(path)
    return path


def test_a_probe_with_one_head_says_it_appended_1_row(chunked, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["probe", str(chunked), "--heads", "knn", "--run-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"appended 1 row to {run_dir / 'results.jsonl'}" in out  # it said "1 rows"


def test_predict_given_a_folder_names_a_head_saved_with_an_upper_case_suffix(
    chunked, tmp_path, capsys
):
    heads = tmp_path / "heads"
    main(["probe", str(chunked), "--heads", "knn", "--save-dir", str(heads)])
    (heads / "knn.skops").rename(heads / "KNN.SKOPS")
    capsys.readouterr()
    assert main(["predict", str(heads), str(chunked)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "it holds KNN.SKOPS" in err  # it said "it holds no saved head"


def test_check_and_export_refuse_an_incomplete_store_in_the_same_words(tmp_path, capsys):
    path = tmp_path / "part.h5"
    make_chunked_store(path, done=3)
    store = FeatureStore(path)
    with pytest.raises(IncompleteStoreError) as exported:
        export_features(store, "pooled", tmp_path / "x.npz")
    assert main(["check", str(path)]) == 2
    checked = capsys.readouterr().err.strip()
    said = "the store is incomplete (1 of 4 chunks are not written yet). Wait for its extraction"
    assert f"Cannot export {path}: {said}" in str(exported.value)
    assert f"Cannot check {path}: {said}" in checked and checked.endswith("Then check again.")
    with pytest.raises(IncompleteStoreError, match="pass allow_incomplete=True"):
        store.arrays("pooled")


_HOLDER = """
import sys, h5py
with h5py.File(sys.argv[1], "w") as f:
    f["x"] = [1, 2, 3]
    f.flush()
    print("ready", flush=True)
    sys.stdin.readline()
"""


def test_a_second_writer_of_a_store_path_leaves_the_first_ones_file_alone(tmp_path):
    """A write_arrays (or StoreWriter.create) while another process creates the same store
    failed on HDF5's lock of PATH.tmp, then deleted that file: the first writer's rename
    failed with 'no such file'."""
    path = tmp_path / "s.h5"
    tmp = tmp_path / "s.h5.tmp"
    holder = python_child(_HOLDER, str(tmp))
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(StoreInUseError, match="Another process is creating a store at"):
            write_arrays(path, {"pooled": np.ones((4, 2))}, [0, 1, 0, 1], ["train"] * 4, "ab")
        assert tmp.exists() and not path.exists()
    finally:
        holder.communicate("\n", timeout=30)
    assert holder.returncode == 0
    # with no process holding it, PATH.tmp is a killed run's leftover: replaced
    store = write_arrays(path, {"pooled": np.ones((4, 2))}, [0, 1, 0, 1], ["train"] * 4, "ab")
    assert store.complete and not tmp.exists()
