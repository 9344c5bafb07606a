"""Trust sweep of the feature store, round 4: read locks beside stores without their `.lock`
(copied into a cache folder), and export."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import make_chunked_store
from test_extract_faults import tmpfs

from featpipe.cli import main
from featpipe.errors import ConfigError, StoreMismatchError
from featpipe.store import FeatureStore
from featpipe.store.writer import write_arrays


def test_prune_keeps_a_copied_store_a_reader_holds(tmp_path, capsys):
    """A store copied into a cache folder has no `.lock`: its readers took no read lock, and
    `featpipe cache prune --all` deleted it under them."""
    make_chunked_store(tmp_path / "s.h5")
    cache = tmp_path / "cache"
    cache.mkdir()
    path = cache / "s.h5"
    shutil.copy(tmp_path / "s.h5", path)
    store = FeatureStore(path)
    assert main(["cache", "prune", str(cache), "--all", "--yes"]) == 0
    assert "in use, kept: s.h5" in capsys.readouterr().out
    assert path.exists() and store.labels()[3] == 1
    store.close()  # the last reader removes its lock file: nothing of it is left
    assert sorted(p.name for p in cache.iterdir()) == ["s.h5"]
    assert main(["cache", "prune", str(cache), "--all", "--yes"]) == 0
    assert list(cache.iterdir()) == []


@pytest.fixture
def small_disk(tmp_path):
    yield from tmpfs(tmp_path / "disk", "2m")


def test_a_store_in_a_read_only_folder_reads_without_a_lock(small_disk):
    path = small_disk / "s.h5"
    make_chunked_store(path)
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    try:
        store = FeatureStore(path)
        assert not store._read_lock.held and store.labels()[3] == 1
        assert len(store.arrays("pooled", "train")[0]) == 20
        store.close()
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)


def test_write_arrays_refuses_a_text_source_attribute_instead_of_writing_a_damaged_store(
    tmp_path,
):
    """attrs={"source": "cifar10"} was written as plain text and read back as JSON: the store
    just written was "not a readable featpipe store: its layout is damaged"."""
    path = tmp_path / "s.h5"
    args = ({"pooled": np.ones((4, 3))}, [0, 1, 0, 1], ["train"] * 2 + ["test"] * 2, ["a", "b"])
    with pytest.raises(ConfigError, match=r"'source' must be a dict .*got 'cifar10'"):
        write_arrays(path, *args, attrs={"source": "cifar10"})
    assert list(tmp_path.iterdir()) == []
    store = write_arrays(path, *args, attrs={"source": {"name": "cifar10"}, "note": "kept"})
    assert store.attrs["source"] == {"name": "cifar10"} and store.attrs["note"] == "kept"
    store.close()


@pytest.mark.parametrize("fmt", ["npz", "parquet"])
def test_export_into_a_folder_that_takes_no_file_is_one_line(tmp_path, capsys, fmt):
    """A folder where no file can be made (/proc here; one without write permission for a
    user) ended the export in a FileNotFoundError or PermissionError traceback."""
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    make_chunked_store(tmp_path / "s.h5")
    assert main(["export", str(tmp_path / "s.h5"), "--out", f"/proc/e.{fmt}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"Cannot write /proc/e.{fmt}" in err
    assert "choose another --out" in err and not Path(f"/proc/e.{fmt}").exists()


def test_a_store_replaced_after_it_was_opened_is_an_error_not_its_rows(tmp_path):
    """Each read opens the path anew: a store another extraction wrote there since (with
    --overwrite) was read silently, its features and labels under the first store's classes."""
    n = 6
    first = write_arrays(
        tmp_path / "s.h5", {"pooled": np.zeros((n, 3))}, np.arange(n) % 2, ["train"] * n, "ab"
    )
    other = write_arrays(
        tmp_path / "t.h5", {"pooled": np.ones((n, 3))}, [1] * n, ["train"] * n, ["cat", "dog"]
    )
    other.close()
    os.replace(tmp_path / "t.h5", tmp_path / "s.h5")  # what --overwrite does
    with pytest.raises(StoreMismatchError, match=r"s\.h5 was replaced by another store"):
        first.arrays("pooled", "train")
    X, y = FeatureStore(tmp_path / "s.h5").arrays("pooled", "train")  # opened again: the new one
    assert X.min() == 1 and y.tolist() == [1] * n


def test_another_programs_hdf5_file_is_not_advised_for_deletion(tmp_path, capsys):
    """`featpipe info model.h5` on another program's HDF5 file (weights, data) said "Delete
    it, or run the extraction again with --overwrite"."""
    path = tmp_path / "model.h5"
    with h5py.File(path, "w") as f:
        f["weights"] = np.zeros(3)
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert "but not a featpipe store" in err and "another program's data" in err
    assert "Delete it" not in err and path.exists()
