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
    assert out.splitlines()[-1].startswith("4 store(s), 2 leftover file(s)")


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
