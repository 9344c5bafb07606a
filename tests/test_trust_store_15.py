"""Trust sweep, store reader checks: damaged flags that read as skipped rows or as an
incomplete store, and files that are not stores at all (not HDF5) given as stores."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from extract_child import NoiseSource
from test_trust_store_13 import OPTIONS, _parted

from featpipe.cli import main
from featpipe.errors import UnreadableStoreError
from featpipe.extract import extract
from featpipe.store import FeatureStore


def _store(out: Path, fail_at: int | None = None) -> FeatureStore:
    """A complete one-file store of 8 rows in 4 chunks of 2 (row ``fail_at`` skipped)."""
    source = NoiseSource(8, fail_at=fail_at)
    store = extract(source, "toy", ["pooled"], out=out, chunk_rows=2, on_error="skip", **OPTIONS)
    store.close()
    return store


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_a_skipped_row_without_a_reason_is_refused_as_damaged(tmp_path, capsys):
    """A zeroed samples/ok chunk (its data and fletcher32 both zero, which pass the checksum)
    read as 2 rows skipped with an empty reason: they dropped out of arrays() unnoticed.
    The writer records a reason for every skipped row, so a blank one is damage."""
    out = tmp_path / "s.h5"
    _store(out)
    with h5py.File(out, "r+") as f:
        f["samples/ok"][2:4] = False  # what a zeroed chunk reads as
    with pytest.raises(UnreadableStoreError, match=r"samples/ok flags are damaged"):
        FeatureStore(out).arrays("pooled")
    assert main(["info", str(out), "--no-scan"]) == 2
    err = _one_line(capsys)
    assert "between rows 2 and 3" in err and "--overwrite" in err


def test_a_really_skipped_row_still_reads_with_its_reason(tmp_path):
    """The check above leaves a row skipped at extraction (it has a reason) as it was."""
    out = tmp_path / "s.h5"
    _store(out, fail_at=3)
    store = FeatureStore(out)
    assert len(store.arrays("pooled")[0]) == 7
    assert "broken" in store.skipped()["img0003"]


def test_a_complete_store_with_a_pending_chunk_is_refused_as_damaged(tmp_path, capsys):
    """A zeroed progress/chunk_done in a store marked complete said 'is incomplete ... rerun
    to resume', and the rerun (which reuses a complete store) said the same forever."""
    out = tmp_path / "s.h5"
    X = _store(out).arrays("pooled")[0]
    with h5py.File(out, "r+") as f:
        f["progress/chunk_done"][1] = False
    assert main(["info", str(out), "--no-scan"]) == 2
    err = _one_line(capsys)
    assert "marked complete, yet 1 of 4 chunks are not marked done" in err
    assert "Rerun" not in err and "--overwrite" in err
    with pytest.raises(UnreadableStoreError, match="chunk_done flags are damaged"):
        extract(NoiseSource(8), "toy", ["pooled"], out=out, chunk_rows=2, **OPTIONS)
    again = extract(
        NoiseSource(8), "toy", ["pooled"], out=out, chunk_rows=2, overwrite=True, **OPTIONS
    )
    np.testing.assert_array_equal(again.arrays("pooled")[0], X)


def test_a_complete_parted_store_whose_part_lost_a_done_flag_is_refused(tmp_path):
    out = tmp_path / "p.h5"
    part = _parted(out).parts[1].path
    with h5py.File(part, "r+") as f:
        f["progress/chunk_done"][0] = False
    with pytest.raises(UnreadableStoreError, match="chunk_done flags are damaged"):
        FeatureStore(out)


@pytest.mark.parametrize("name", ["photo.jpg", "train.py", "manifest.csv"])
def test_a_file_that_is_not_hdf5_is_named_so_not_advised_to_be_deleted(tmp_path, capsys, name):
    """Any non-HDF5 file given as a store got 'Delete it, or run the extraction again with
    --overwrite': advice to delete the user's own image, script or manifest."""
    path = tmp_path / name
    path.write_bytes(b"\xff\xd8\xff\xe0 not a store" if name.endswith("jpg") else b"a,b\n1,2\n")
    for command in (
        ["info", str(path)],
        ["probe", str(path)],
        ["export", str(path), "--out", str(tmp_path / "e.npz")],
    ):
        assert main(command) == 2
        err = _one_line(capsys)
        assert "not an HDF5 file" in err and "Give the path of a featpipe store's .h5" in err
        assert "Delete it" not in err
    assert path.exists()


def test_export_out_naming_its_store_is_refused_before_writing(tmp_path, capsys):
    """Checked, no change needed: `export STORE --format npz --out STORE` is refused."""
    out = tmp_path / "s.h5"
    before = _store(out).arrays("pooled")[0]
    assert main(["export", str(out), "--format", "npz", "--out", str(out)]) == 2
    assert "is the store itself" in _one_line(capsys)
    np.testing.assert_array_equal(FeatureStore(out).arrays("pooled")[0], before)


def test_a_refused_second_consolidate_leaves_the_first_ones_copy_intact(tmp_path):
    """A second consolidate into the OUT a first is writing opened OUT.tmp with mode "w",
    which truncated it before HDF5 found the first one's lock: the first then renamed a
    store marked complete whose features, labels and flags were all zeros."""
    from test_trust_store_6 import consolidate_paused

    from featpipe.errors import StoreInUseError
    from featpipe.store.consolidate import consolidate

    out = tmp_path / "one.h5"
    refused = pytest.raises(StoreInUseError, match=f"consolidating into {out} now")
    with consolidate_paused(tmp_path, out) as source, refused:
        consolidate(source, out, force=True)
    X, y = FeatureStore(source).arrays("pooled")
    got = FeatureStore(out).arrays("pooled")
    np.testing.assert_array_equal(got[0], X)
    np.testing.assert_array_equal(got[1], y)
