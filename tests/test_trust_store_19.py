"""Trust sweep of store renames and pruning: two Python-API writers of one path never rename
or delete each other's temporary file, each rename of a store file is followed by an fsync of
its folder (a power cut keeps the new name), and prune names the one bad part of a parted
store it deletes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import h5py
import numpy as np
import pytest
from test_trust_store_17 import _complete

import featpipe.store.writer as writer_module
from featpipe.cli import main
from featpipe.errors import StoreInUseError
from featpipe.store.writer import StoreWriter, create_new


def _create(path: Path) -> None:
    writer = StoreWriter.create(
        path,
        ids=["a", "b", "c"],
        labels=np.array([0, 1, 0]),
        splits=np.zeros(3),
        classes=["cat", "dog"],
        layers={"pooled": (4, "avg")},
        dtype="float32",
        rows_per_chunk=2,
        attrs={},
    )
    writer.close()


class _Other:
    """The other writer, started once at the moment the test gives: it makes the temporary
    file as StoreWriter.create does and keeps it open (HDF5 locks it, as in another process:
    flock locks belong to each open file)."""

    def __init__(self, tmp: Path):
        self.tmp, self.file, self.said, self.inode = tmp, None, None, None

    def start(self) -> None:
        if self.said is None:
            try:
                self.file = create_new(self.tmp, StoreInUseError("busy"))
                self.said, self.inode = "made", os.stat(self.tmp).st_ino
            except StoreInUseError:
                self.said = "busy"

    def stop(self) -> None:
        if self.file is not None:
            self.file.close()


def _race(monkeypatch, tmp_path, moment: str):
    """StoreWriter.create at a path while another writer starts at ``moment``: right after
    this one closes its temporary file, or as it renames that file into place."""
    path = tmp_path / "x.h5"
    tmp = path.with_name("x.h5.tmp")
    other = _Other(tmp)
    if moment == "closed":
        real_create = writer_module.create_new

        class Closing:
            def __init__(self, f):
                self.f = f

            def __enter__(self):
                return self.f

            def __exit__(self, *exc):
                self.f.close()
                other.start()

        monkeypatch.setattr(writer_module, "create_new", lambda t, b: Closing(real_create(t, b)))
    else:
        real_replace = os.replace

        def replacing(src, dst, *args, **kwargs):
            if Path(src) == tmp:
                other.start()
            return real_replace(src, dst, *args, **kwargs)

        monkeypatch.setattr(os, "replace", replacing)
    try:
        try:
            _create(path)
        except StoreInUseError as exc:
            return path, other, exc
        return path, other, None
    finally:
        monkeypatch.undo()
        if other.said == "made":  # the other writer's file is still there, its own
            assert os.stat(tmp).st_ino == other.inode
        other.stop()


@pytest.mark.parametrize("moment", ["closed", "renaming"])
def test_two_writers_of_one_path_never_rename_each_others_file(monkeypatch, tmp_path, moment):
    """Writer A closed x.h5.tmp; writer B, finding it unlocked, deleted it and made its own
    x.h5.tmp, which A then renamed to x.h5: x.h5 held B's half-made file (A failed on it
    with 'open in another process', and B's own rename would fail later). Now whoever
    holds the name wins: B is told busy while A renames, and A is told busy when B took
    the name first; x.h5 is never the other writer's file."""
    path, other, error = _race(monkeypatch, tmp_path, moment)
    if moment == "renaming":  # A holds its file while renaming it: B must wait
        assert other.said == "busy"
        assert error is None
        with h5py.File(path, "r") as f:  # this writer's store, laid out whole
            assert f.attrs["format"] == "featpipe.store"
            assert list(f["samples/id"].asstr()) == ["a", "b", "c"]
    else:  # B took the name first: A's file is gone, and A says so in one line
        assert other.said == "made"
        assert error is not None and "Another process is creating a store at" in str(error)
        assert not path.exists()


def test_each_store_rename_is_followed_by_an_fsync_of_its_folder(monkeypatch, tmp_path):
    """os.replace changes the folder, and a power cut before the folder reaches the disk can
    lose the new name: the store was renamed without an fsync of its folder."""
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            synced.append(os.stat(tmp_path / "x.h5").st_ino if (tmp_path / "x.h5").exists() else 0)
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    _create(tmp_path / "x.h5")
    assert synced and synced[-1] == os.stat(tmp_path / "x.h5").st_ino


def test_prune_incomplete_names_the_one_bad_part_it_could_have_kept(tmp_path, capsys):
    """prune --incomplete deleted a complete parted store with one part cut short, whole and
    without a word on the other parts' rows. It still deletes it whole (an incomplete store,
    as those it deletes with unfinished chunks), and now says that deleting the bad part
    alone, then the same extraction, keeps the others."""
    store, parts = _complete(tmp_path)
    data = parts[0].read_bytes()
    parts[0].write_bytes(data[: len(data) // 2])
    assert main(["cache", "prune", str(tmp_path), "--incomplete", "--yes"]) == 0
    out = capsys.readouterr().out
    assert (
        f"{store.name}: only {store.stem}.parts/{parts[0].name} is bad, and prune deletes the "
        "whole store; to keep its other parts, delete that file alone and run the same "
        "extraction again instead."
    ) in out
    assert not store.exists() and not parts[1].exists()
