"""Trust sweep of the feature store: damaged files, what `featpipe cache prune` may delete,
and a consolidate that other commands run beside."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from extract_child import NoiseSource
from filelock import FileLock

from featpipe.cli import main
from featpipe.errors import UnreadableStoreError
from featpipe.extract import extract
from featpipe.store import FeatureStore, write_arrays

TESTS = Path(__file__).resolve().parent
FAST = dict(workers=0, device="cpu", progress=False, batch_size=4, dtype="float32")


def _small_store(path: Path) -> FeatureStore:
    x = np.random.RandomState(0).randn(6, 3).astype(np.float32)
    return write_arrays(path, {"pooled": x}, [0, 1] * 3, ["train", "val", "test"] * 2, ["a", "b"])


def test_a_foreign_hdf5_file_in_a_cache_folder_is_never_pruned(tmp_path, capsys):
    """Another program's .h5 (e.g. a Keras model) in the cache folder was listed as an
    unreadable store and deleted by prune --incomplete, --older-than and --all."""
    model = tmp_path / "model.h5"
    with h5py.File(model, "w") as f:
        f.create_dataset("dense/kernel", data=np.ones((3, 3)))
    old = time.time() - 40 * 86400
    os.utime(model, (old, old))
    _small_store(tmp_path / "s.h5")
    assert main(["cache", "list", str(tmp_path)]) == 0
    assert re.search(r"^not a featpipe store .* model\.h5$", capsys.readouterr().out, re.M)
    for choice in (["--incomplete"], ["--older-than", "30"], ["--all"]):
        assert main(["cache", "prune", str(tmp_path), *choice, "--yes"]) == 0
        assert model.exists(), choice
    assert not (tmp_path / "s.h5").exists()  # --all deleted the store, not the model


def _damaged_copies(store: Path, folder: Path) -> list[Path]:
    """Copies of ``store`` with one HDF5 metadata signature (B-tree, heap, symbol table
    node, global heap) overwritten each: damage HDF5 detects rather than reads."""
    data = store.read_bytes()
    copies = []
    for found in re.finditer(b"GCOL|HEAP|TREE|SNOD", data):
        blob = bytearray(data)
        blob[found.start() : found.start() + 4] = b"XXXX"
        copies.append(folder / f"damaged-{found.start()}.h5")
        copies[-1].write_bytes(bytes(blob))
    return copies


def test_a_damaged_store_is_one_error_naming_the_file_and_the_fix(tmp_path, capsys):
    """Damage found while reading (a global heap, a B-tree of a dataset) raised h5py's
    OSError or KeyError (a traceback in featpipe info/export) instead of the store's error."""
    copies = _damaged_copies(_small_store(tmp_path / "s.h5").path, tmp_path)
    assert len(copies) > 5
    for path in copies:
        with pytest.raises(UnreadableStoreError, match=re.escape(str(path)) + ".*--overwrite"):
            store = FeatureStore(path)
            store.ids()
            store.arrays("pooled")
            store.info()
        out = tmp_path / "out.npz"
        assert main(["export", str(path), "--out", str(out)]) == 2, path
        assert capsys.readouterr().err.startswith(f"featpipe export: error: {path} is not")


CONSOLIDATE = """
import sys, time
from pathlib import Path
import featpipe.store.consolidate as c

source, out, ready, go = sys.argv[1:]
copy = c._copy

def paused(*args):  # the copy is done; wait for the test before the rename
    copy(*args)
    Path(ready).touch()
    while not Path(go).exists():
        time.sleep(0.05)

c._copy = paused
c.consolidate(source, out)
"""


@contextlib.contextmanager
def consolidate_paused(tmp_path: Path, out: Path):
    """A consolidate of a small parted store into ``out`` in another process, paused after
    its copy and before its rename while the body runs; it must then finish."""
    source = tmp_path / "parted.h5"
    extract(NoiseSource(8), "toy", ["pooled"], out=source, chunk_rows=2, shard=(0, 1), **FAST)
    ready, go = tmp_path / "ready", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    args = [sys.executable, "-c", textwrap.dedent(CONSOLIDATE), source, out, ready, go]
    child = subprocess.Popen([str(a) for a in args], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), child.stderr.read() if child.poll() is not None else "timeout"
        yield source
        go.touch()
        assert child.wait(timeout=60) == 0, child.stderr.read()
    finally:
        child.kill()
    assert FeatureStore(out).complete


def test_cache_prune_leaves_a_consolidate_in_progress_alone(tmp_path):
    """consolidate writes OUT.h5.tmp without the store's lock, so prune took it for the
    leftover of a killed run and deleted it: the consolidate then failed on its rename."""
    cache = tmp_path / "cache"
    cache.mkdir()
    with consolidate_paused(tmp_path, cache / "one.h5"):
        assert main(["cache", "prune", str(cache), "--all", "--yes"]) == 0


def test_a_second_consolidate_into_the_same_out_leaves_the_first_alone(tmp_path):
    """A second consolidate into the OUT a first is writing (job-array tasks each ending
    with the same consolidate) failed to open OUT.tmp with h5py's OSError traceback, after
    deleting the first one's OUT.tmp under it, so both failed."""
    from featpipe.errors import StoreInUseError
    from featpipe.store.consolidate import consolidate

    out = tmp_path / "one.h5"
    refused = pytest.raises(StoreInUseError, match=f"consolidating into {out} now")
    with consolidate_paused(tmp_path, out) as source, refused:
        consolidate(source, out, force=True)


def test_pruning_a_one_file_store_leaves_the_parts_of_its_namesake(tmp_path, capsys):
    """feats.h5 (one file) and the parted feats.hdf5 share the folder name feats.parts:
    prune counted feats.hdf5's parts into feats.h5 and deleted them with it, breaking the
    parted store."""
    parted = tmp_path / "feats.hdf5"
    extract(NoiseSource(8), "toy", ["pooled"], out=parted, chunk_rows=2, shard=(0, 1), **FAST)
    _small_store(tmp_path / "feats.h5")
    assert main(["cache", "prune", str(tmp_path), "--all", "--yes"]) == 0
    assert "deleted 1 files" in capsys.readouterr().out
    assert not (tmp_path / "feats.h5").exists()
    store = FeatureStore(parted)
    assert store.complete and store.arrays("pooled")[0].shape == (
        8,
        store.layer_info("pooled")["dim"],
    )


def test_consolidate_never_replaces_a_store_another_process_is_writing(tmp_path):
    """consolidate --force into the path of a store an extraction is writing (its lock held)
    swapped the file under that writer: the extraction went on into a deleted file and
    returned the consolidated store as its own."""
    from featpipe.errors import StoreInUseError
    from featpipe.store.consolidate import consolidate
    from featpipe.store.lock import lock_path, owner_path

    source = tmp_path / "parted.h5"
    extract(NoiseSource(8), "toy", ["pooled"], out=source, chunk_rows=2, shard=(0, 1), **FAST)
    busy = _small_store(tmp_path / "busy.h5").path
    before = busy.read_bytes()
    held = FileLock(str(lock_path(busy)))
    held.acquire()
    owner_path(busy).write_text('{"pid": 4242, "host": "node7"}')
    try:
        with pytest.raises(StoreInUseError, match="in use by pid 4242 on host node7"):
            consolidate(source, busy, force=True)
    finally:
        held.release()
    assert busy.read_bytes() == before


def test_prune_older_than_nan_is_refused(tmp_path, capsys):
    """--older-than nan passed the check for a negative number, and no age is <= NaN, so
    prune deleted every store, however new."""
    _small_store(tmp_path / "s.h5")
    assert main(["cache", "prune", str(tmp_path), "--older-than", "nan", "--yes"]) == 2
    assert "--older-than must be a number of days >= 0; got nan" in capsys.readouterr().err
    assert (tmp_path / "s.h5").exists()
