"""Files written whole (reports, results, history, exports) are durable: the temporary file's
bytes are synced before it takes the real name and the folder after, so a power cut leaves the
old file or the new one, never an empty one or a lost name. A failed folder sync says the file
is in place."""

from __future__ import annotations

import errno
import os
import stat
import warnings
from pathlib import Path

import numpy as np
import pytest
from test_trust_store_20 import _folder_fsync_fails

from featpipe.atomic import replace_with, write_text_atomic
from featpipe.cli import main
from featpipe.errors import FeaturePipeError, FileWriteError
from featpipe.store import write_arrays


def record_syncs(monkeypatch) -> list[tuple]:
    """Record, in order, each fsync (("file", inode) or ("folder", inode)) and each
    os.replace (("replace", inode of the file moved, target))."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        events.append(("folder" if stat.S_ISDIR(st.st_mode) else "file", st.st_ino))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.stat(src).st_ino, Path(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def assert_synced_in_order(events: list[tuple], path: Path) -> None:
    """The file now at ``path`` was synced, then renamed there, then its folder synced."""
    ino, folder = path.stat().st_ino, path.parent.stat().st_ino
    moved = [i for i, e in enumerate(events) if e[0] == "replace" and e[2] == path]
    assert len(moved) == 1 and events[moved[0]][1] == ino, events
    assert ("file", ino) in events[: moved[0]], f"not synced before its rename: {events}"
    assert ("folder", folder) in events[moved[0] + 1 :], f"folder not synced after: {events}"


def test_replace_with_syncs_the_file_before_its_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = record_syncs(monkeypatch)
    path = tmp_path / "report.md"
    write_text_atomic(path, "# report\n")
    assert path.read_text() == "# report\n"
    assert_synced_in_order(events, path)


def test_a_failed_folder_sync_leaves_the_new_file_in_place_and_says_so(tmp_path, monkeypatch):
    path = tmp_path / "history.jsonl"
    path.write_text("old\n")
    _folder_fsync_fails(monkeypatch)
    with pytest.raises(FileWriteError) as caught:
        replace_with(path, lambda tmp: tmp.write_text("new\n"))
    message = str(caught.value)
    assert f"Cannot sync the folder {tmp_path}" in message and "input/output error" in message
    assert f"{path} is written whole and in place" in message and "power cut" in message
    assert caught.value.errno == errno.EIO and isinstance(caught.value, OSError)
    assert path.read_text() == "new\n"  # not deleted as a failed temporary file would be
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.jsonl"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path, monkeypatch):
    events = record_syncs(monkeypatch)
    path = tmp_path / "results.json"
    path.write_text("old\n")

    def write(tmp):
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        replace_with(path, write)
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == [path.name]
    assert not [e for e in events if e[0] == "replace"]


def small_store(path: Path):
    y = np.arange(12) % 2
    X = np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32)
    splits = ["train"] * 6 + ["val"] * 3 + ["test"] * 3
    return write_arrays(path, {"pooled": X}, y, splits, ["a", "b"], dtype="float32")


@pytest.mark.parametrize("suffix", [".npz", ".parquet"])
def test_export_syncs_its_file_before_the_rename_and_the_folder_after(
    tmp_path, monkeypatch, suffix
):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    store = small_store(tmp_path / "s.h5")
    out = tmp_path / "out" / f"features{suffix}"
    events = record_syncs(monkeypatch)
    assert main(["export", str(store.path), "--out", str(out)]) == 0
    assert_synced_in_order(events, out)
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]


def test_export_with_a_failed_folder_sync_keeps_the_file_and_says_so_in_one_line(
    tmp_path, monkeypatch, capsys
):
    store = small_store(tmp_path / "s.h5")
    out = tmp_path / "features.npz"
    _folder_fsync_fails(monkeypatch)
    assert main(["export", str(store.path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("featpipe export: error: Cannot sync")
    assert f"{out} is written whole and in place" in err and "Nothing was written" not in err
    assert np.load(out)["features"].shape == (12, 4)
    assert issubclass(FileWriteError, FeaturePipeError)


def test_the_first_row_appended_to_results_syncs_the_new_file_and_its_folder(tmp_path, monkeypatch):
    from test_report import make_row

    from featpipe.report import RESULTS_FILE, append_result, read_results

    path = tmp_path / RESULTS_FILE
    events = record_syncs(monkeypatch)
    append_result(path, make_row("a"))
    ino, folder = path.stat().st_ino, tmp_path.stat().st_ino
    assert events == [("file", ino), ("folder", folder)]  # its row, then its name
    events.clear()
    append_result(path, make_row("b"))
    assert events == [("file", ino)]  # a row more: the name is already on disk
    assert [r["method"] for r in read_results(path)] == ["a", "b"]


def test_a_saved_head_and_its_sidecar_are_synced_before_their_renames_and_the_folder_after(
    tmp_path, monkeypatch
):
    from sklearn.linear_model import LogisticRegression

    from featpipe.heads import load_head, save_head
    from featpipe.heads.persistence import sidecar_path

    X = np.random.default_rng(0).normal(size=(20, 3))
    head = LogisticRegression().fit(X, np.arange(20) % 2)
    path = tmp_path / "head.joblib"
    events = record_syncs(monkeypatch)
    save_head(head, path)
    assert_synced_in_order(events, path)
    assert_synced_in_order(events, sidecar_path(path))
    with warnings.catch_warnings():  # joblib's "runs code while loading", said elsewhere
        warnings.simplefilter("ignore")
        loaded, _ = load_head(path)
    np.testing.assert_array_equal(loaded.predict(X), head.predict(X))
