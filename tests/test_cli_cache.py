"""``featpipe cache list`` and ``featpipe cache prune``."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import time

import numpy as np
import pytest
from filelock import FileLock

from featpipe.cli import main
from featpipe.store import FeatureStore, StoreWriter, write_arrays
from featpipe.store.lock import StoreLock, lock_path, owner_path

ATTRS = {"source": {"kind": "ImageFolderSource", "name": "pets"}, "backbone": {"spec": "toy"}}


def _complete(path, n=12):
    x = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    write_arrays(path, {"pooled": x}, [0] * n, ["train"] * n, ["a"], attrs=ATTRS)
    with StoreLock(path):  # a store made by extract leaves its lock file beside it
        pass


def _incomplete(path, done=(0,), n=10, rows=4):
    with StoreWriter.create(
        path,
        ids=[str(i) for i in range(n)],
        labels=np.zeros(n),
        splits=np.zeros(n),
        classes=["a"],
        layers={"pooled": (2, "none"), "stage1:avg": (4, "avg")},
        dtype="float16",
        rows_per_chunk=rows,
        attrs=ATTRS,
    ) as w:
        for i in done:
            start, stop = w.chunk_rows(i)
            rows = stop - start
            w.write_chunk(i, {"pooled": np.ones((rows, 2)), "stage1:avg": np.ones((rows, 4))})


@pytest.fixture
def cache(tmp_path):
    """A cache folder with one store of each state, and leftovers."""
    folder = tmp_path / "cache"
    folder.mkdir()
    _complete(folder / "pets-toy-complete.h5")
    _incomplete(folder / "pets-toy-partial.h5")
    (folder / "pets-toy-broken.h5").write_text("not a store")
    shutil.copy(folder / "pets-toy-partial.h5", folder / "pets-toy-killed.h5.tmp")  # killed
    (folder / "pets-toy-gone.h5.lock").touch()  # the lock file of a deleted store
    (folder / "notes.txt").write_text("not ours")
    return folder


def _hold(store, pid=4242, host="node7"):
    """Hold ``store``'s lock as another process would (with its note)."""
    held = FileLock(str(lock_path(store)))
    held.acquire()
    owner_path(store).write_text(json.dumps({"pid": pid, "host": host}))
    return held


def test_list_shows_every_store_and_leftover_with_its_state(cache, capsys):
    _incomplete(cache / "pets-toy-busy.h5")
    held = _hold(cache / "pets-toy-busy.h5")
    try:
        assert main(["cache", "list", str(cache)]) == 0
    finally:
        held.release()
    out = capsys.readouterr().out
    print(out)
    lines = {line.split()[-1]: line for line in out.splitlines()[1:-1]}
    assert set(lines) == {
        "pets-toy-complete.h5",
        "pets-toy-partial.h5",
        "pets-toy-broken.h5",
        "pets-toy-busy.h5",
        "pets-toy-killed.h5.tmp",
        "pets-toy-gone.h5.lock",
    }
    assert out.splitlines()[0].split() == [
        "STATE", "SIZE", "AGE", "ROWS", "SOURCE", "BACKBONE", "LAYERS", "FILE"
    ]  # fmt: skip
    assert re.fullmatch(
        r"complete +[\d.]+ KiB +\d+ min +12 +pets +toy +pooled +pets-toy-complete\.h5",
        lines["pets-toy-complete.h5"],
    )
    assert lines["pets-toy-partial.h5"].startswith("incomplete 1/3")
    assert "pooled,stage1:avg" in lines["pets-toy-partial.h5"]
    assert lines["pets-toy-busy.h5"].startswith("in use by pid 4242 on host node7")
    assert lines["pets-toy-broken.h5"].startswith("unreadable")
    assert lines["pets-toy-killed.h5.tmp"].startswith("leftover")
    assert out.splitlines()[-1].startswith("4 stores, 2 leftover files")


def test_prune_without_a_choice_removes_only_leftovers(cache, capsys):
    assert main(["cache", "prune", str(cache), "--yes"]) == 0
    names = sorted(p.name for p in cache.iterdir())
    assert names == [
        "notes.txt",
        "pets-toy-broken.h5",
        "pets-toy-complete.h5",
        "pets-toy-complete.h5.lock",
        "pets-toy-partial.h5",
    ]
    assert "deleted 2 files" in capsys.readouterr().out


def test_prune_incomplete_deletes_what_it_lists_and_never_a_store_in_use(cache, capsys):
    _incomplete(cache / "pets-toy-busy.h5")
    held = _hold(cache / "pets-toy-busy.h5")
    try:
        assert main(["cache", "prune", str(cache), "--incomplete", "--yes"]) == 0
    finally:
        held.release()
    out = capsys.readouterr().out
    assert "in use, kept: pets-toy-busy.h5" in out
    states = ("incomplete", "unreadable", "leftover")
    listed = {line.split()[-1] for line in out.splitlines() if line.startswith(states)}
    assert listed == {
        "pets-toy-partial.h5",
        "pets-toy-broken.h5",
        "pets-toy-killed.h5.tmp",
        "pets-toy-gone.h5.lock",
    }
    names = sorted(p.name for p in cache.iterdir())
    assert names == [
        "notes.txt",
        "pets-toy-busy.h5",
        "pets-toy-busy.h5.lock",
        "pets-toy-busy.h5.lock.json",
        "pets-toy-complete.h5",
        "pets-toy-complete.h5.lock",
    ]
    assert FeatureStore(cache / "pets-toy-busy.h5").chunk_done().tolist() == [True, False, False]


def test_prune_older_than_uses_the_last_write(cache):
    old = time.time() - 40 * 86400
    os.utime(cache / "pets-toy-complete.h5", (old, old))
    assert main(["cache", "prune", str(cache), "--older-than", "30", "--yes"]) == 0
    assert not (cache / "pets-toy-complete.h5").exists()
    assert not (cache / "pets-toy-complete.h5.lock").exists()
    assert (cache / "pets-toy-partial.h5").exists()  # written just now
    # both options: only incomplete stores that old
    os.utime(cache / "pets-toy-broken.h5", (old, old))
    assert main(["cache", "prune", str(cache), "--older-than", "30", "--incomplete", "-y"]) == 0
    assert not (cache / "pets-toy-broken.h5").exists() and (cache / "pets-toy-partial.h5").exists()


@pytest.mark.parametrize("answer, deleted", [("y\n", True), ("n\n", False), ("", False)])
def test_prune_asks_first(cache, monkeypatch, capsys, answer, deleted):
    monkeypatch.setattr("sys.stdin", io.StringIO(answer))
    assert main(["cache", "prune", str(cache), "--all"]) == (0 if deleted else 1)
    out = capsys.readouterr().out
    assert "Delete these 5 files" in out
    assert (cache / "pets-toy-complete.h5").exists() is not deleted
    assert ("nothing deleted" in out) is not deleted


def test_cache_errors_are_one_line(tmp_path, capsys):
    assert main(["cache", "list", str(tmp_path / "nowhere")]) == 2
    assert "No cache folder at" in capsys.readouterr().err
    assert main(["cache", "prune", str(tmp_path), "--older-than", "-1"]) == 2
    assert "--older-than must be" in capsys.readouterr().err


def _parted(folder, n=32):
    """An incomplete parted store of the toy backbone (2 parts, the first one filled)."""
    from extract_child import NoiseSource

    from featpipe.extract import extract

    fast = dict(workers=0, device="cpu", progress=False, batch_size=4, chunk_rows=4)
    store = extract(NoiseSource(n), "toy", ["pooled"], cache_dir=folder, shard=(0, 2), **fast)
    assert len(store.parts) == 2 and not store.complete
    return store.path, [part.path for part in store.parts]


def test_a_parted_store_with_a_part_being_written_is_in_use_and_never_pruned(tmp_path, capsys):
    # a --shard task fills a part under the part's own lock, not the top-level one; with
    # HDF5 file locking off (NFS, Lustre) nothing else tells that the store is being written
    store, parts = _parted(tmp_path)
    held = _hold(parts[1])
    try:
        assert main(["cache", "list", str(tmp_path)]) == 0
        (line,) = [s for s in capsys.readouterr().out.splitlines() if s.endswith(store.name)]
        assert line.startswith("in use by pid 4242 on host node7")
        for choice in (["--incomplete"], ["--older-than", "0"], ["--all"]):
            assert main(["cache", "prune", str(tmp_path), *choice, "--yes"]) == 0
            assert f"in use, kept: {store.name}" in capsys.readouterr().out
        assert store.exists() and all(part.exists() for part in parts)
    finally:
        held.release()
    from featpipe.store.cache import remove, scan

    (entry,) = [e for e in scan(tmp_path) if e.is_store]
    held = _hold(parts[1])
    try:  # chosen before the writer started: remove still finds the part's lock held
        assert not remove(entry)
    finally:
        held.release()
    assert store.exists() and all(part.exists() for part in parts)
    assert remove(entry) and not store.exists() and not parts[0].parent.exists()


def test_a_parted_store_another_program_has_open_is_listed_not_a_crash(tmp_path, monkeypatch):
    import subprocess
    import sys

    monkeypatch.delenv("HDF5_USE_FILE_LOCKING", raising=False)
    store, parts = _parted(tmp_path)
    hold = "import h5py, sys, time; f = h5py.File(sys.argv[1], 'r+'); print('open', flush=True)"
    child = subprocess.Popen(
        [sys.executable, "-c", hold + "; time.sleep(60)", str(parts[1])],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "open"  # written without featpipe's lock
        from featpipe.store.cache import scan

        (entry,) = [e for e in scan(tmp_path) if e.is_store]
        assert entry.state.startswith("in use") and entry.in_use, entry.state
        assert main(["cache", "prune", str(tmp_path), "--incomplete", "--yes"]) == 0
        assert store.exists() and all(part.exists() for part in parts)
    finally:
        child.kill()
        child.wait()


def test_prune_older_than_dates_a_parted_store_by_its_newest_file(tmp_path):
    store, parts = _parted(tmp_path)
    old = time.time() - 40 * 86400
    for path in (store, parts[0]):
        os.utime(path, (old, old))
    # parts[1] (the part a --shard task writes now) is new: the store is still being written
    assert main(["cache", "prune", str(tmp_path), "--older-than", "30", "--yes"]) == 0
    assert store.exists() and all(part.exists() for part in parts)
    os.utime(parts[1], (old, old))
    assert main(["cache", "prune", str(tmp_path), "--older-than", "30", "--yes"]) == 0
    assert not store.exists() and not parts[0].parent.exists()
