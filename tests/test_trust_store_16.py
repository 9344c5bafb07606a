"""Trust sweep of parted stores: the top-level file on disk before its name and its completion,
a parts folder kept while a renamed store reads it, a part that lost a layer refused."""

from __future__ import annotations

import os
import subprocess
import sys

import h5py
import pytest
from conftest import WriteRecorder
from extract_child import NoiseSource
from test_cli_cache import _parted
from test_trust_extract_13 import _watch_renames

from featpipe.cli import main
from featpipe.errors import UnreadableStoreError
from featpipe.extract import extract
from featpipe.store import FeatureStore
from featpipe.store import lock as store_lock

FAST = dict(workers=0, device="cpu", progress=False, batch_size=4, chunk_rows=4)


def test_a_parted_stores_top_level_file_is_on_disk_before_it_gets_its_name(tmp_path, monkeypatch):
    """The top-level file holds samples/id, label and split: renamed without an fsync, a power
    cut could leave zeros there that pass their checksums (every label 0, every row train)."""
    renamed = _watch_renames(monkeypatch)
    store = extract(NoiseSource(16), "toy", ["pooled"], cache_dir=tmp_path, shard=(0, 1), **FAST)
    assert store.complete and store.parts
    stores = [(data, synced) for data, synced in renamed if data[:4] == b"\x89HDF"]
    assert len(stores) == 2  # the part file, then the top-level file (not the lock's notes)
    for data, synced in stores:
        assert data == synced


def test_a_parted_store_is_on_disk_before_it_is_marked_complete(tmp_path, monkeypatch):
    """finish_parted writes samples/error into the top-level file, then ``complete``: with
    only a flush between them a power cut could keep ``complete`` and lose the reasons."""
    events: list[tuple[str, str]] = []
    real_fsync, real_set = os.fsync, h5py.AttributeManager.__setitem__

    def fsync(fd):
        real_fsync(fd)
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))

    def setitem(attrs, name, value):
        if name == "complete" and value is True:
            events.append(("complete", h5py.h5f.get_name(attrs._id).decode()))
        real_set(attrs, name, value)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(h5py.AttributeManager, "__setitem__", setitem)
    store = extract(NoiseSource(16), "toy", ["pooled"], cache_dir=tmp_path, shard=(0, 1), **FAST)
    top = str(store.path.resolve())
    at = events.index(("complete", top))
    assert ("fsync", top) in events[:at]
    last_fsync = max(i for i, e in enumerate(events[:at]) if e == ("fsync", top))
    assert not any(kind == "complete" for kind, _ in events[last_fsync + 1 : at])


def test_prune_refuses_the_parts_folder_of_a_store_renamed_alone(tmp_path, capsys):
    """p.h5 renamed to q.h5 still reads p.parts (renaming it back restores it): pruning
    p.parts as a folder of stores deleted every part, so every row was lost."""
    store, parts = _parted(tmp_path)
    renamed = store.with_name("q.h5")
    store.rename(renamed)
    folder = parts[0].parent
    assert main(["cache", "prune", str(folder), "--all", "--yes"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"is the parts folder of the parted store {renamed}" in err
    assert all(part.exists() for part in parts)
    renamed.rename(store)
    assert FeatureStore(store).chunk_done().sum() > 0


def test_an_incomplete_parted_store_whose_part_lost_a_layer_is_refused(tmp_path):
    """A part without features/<layer> read as zeros through the top-level file when the store
    was incomplete (only complete stores checked their parts' datasets)."""
    store, parts = _parted(tmp_path)
    with h5py.File(parts[0], "r+") as p:
        del p["features/pooled"]
    with pytest.raises(UnreadableStoreError, match="part 0 of the parted store") as info:
        FeatureStore(store).arrays("pooled", allow_incomplete=True)
    assert "features/pooled" in str(info.value)
    assert "Delete that file and run the same extraction again" in str(info.value)


def test_an_incomplete_parted_store_with_a_part_being_written_still_opens(tmp_path):
    """The check of the parts skips one whose writer holds it open (its writer checks it): the
    store still opens, e.g. for `featpipe info` to show how far the writers got."""
    store, parts = _parted(tmp_path)
    code = (
        f"import h5py, sys; f = h5py.File({str(parts[1])!r}, 'r+'); print('open'); sys.stdin.read()"
    )
    writer = subprocess.Popen(  # HDF5 locks the file for writing, as a writer does
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout.readline().strip() == "open"
        opened = FeatureStore(store)
    finally:
        writer.communicate("")
    assert len(opened) == 32 and not opened.complete


def test_the_lock_wait_line_is_one_write(monkeypatch):
    """Under torchrun's ``python -u`` print writes the text and its newline apart, so two
    ranks waiting for one store could join their lines in the shared log."""
    stream = WriteRecorder()
    monkeypatch.setattr("sys.stderr", stream)
    store_lock._stderr("waiting for s.h5: in use by pid 1")
    assert stream.calls == ["featpipe: waiting for s.h5: in use by pid 1\n"]


def test_a_renamed_store_is_listed_as_renamed(tmp_path, capsys):
    """cache list names a parted store renamed with its folder by the folder it reads."""
    store, parts = _parted(tmp_path)
    store.rename(tmp_path / "q.h5")
    parts[0].parent.rename(tmp_path / "q.parts")
    assert main(["cache", "list", str(tmp_path)]) == 0
    line = [s for s in capsys.readouterr().out.splitlines() if s.endswith("q.h5")]
    assert line and f"renamed (reads {parts[0].parent.name})" in line[0]
