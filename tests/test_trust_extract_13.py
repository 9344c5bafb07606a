"""Trust sweep of extraction under kills and power cuts: a store is never wrong after a crash."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
from extract_child import LAYERS, NoiseSource

from featpipe.extract import extract
from featpipe.store import FeatureStore
from featpipe.store.writer import StoreWriter

TESTS = Path(__file__).resolve().parent
FAST = dict(workers=0, device="cpu", progress=False, batch_size=4, dtype="float16")


def test_a_chunks_rows_are_on_disk_before_its_done_flag(tmp_path, monkeypatch):
    """HDF5's flush hands bytes to the OS without fsync, so a power cut could keep a chunk's
    done flag and lose its rows: the never-written chunk reads as zeros that pass their
    checksum, in a store that says complete. Each flag must follow an fsync of its rows."""
    path = tmp_path / "s.h5"
    synced: list[bytes] = []  # the file as an fsync left it on disk
    flagged: list[tuple[int, int]] = []  # (chunk, fsyncs done when its flag was set)
    real_fsync, real_set = os.fsync, h5py.Dataset.__setitem__

    def fsync(fd):
        real_fsync(fd)
        if os.readlink(f"/proc/self/fd/{fd}") == str(path):  # not the new store's temporary
            synced.append(path.read_bytes())

    def setitem(ds, key, value):
        if ds.name == "/progress/chunk_done" and value is True:
            flagged.append((key, len(synced)))
        real_set(ds, key, value)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(h5py.Dataset, "__setitem__", setitem)
    x = np.random.RandomState(0).rand(12, 5).astype(np.float32) + 1
    with StoreWriter.create(
        path,
        ids=[str(i) for i in range(12)],
        labels=np.arange(12) % 2,
        splits=np.zeros(12, np.uint8),
        classes=["a", "b"],
        layers={"pooled": (5, "avg")},
        dtype="float32",
        rows_per_chunk=4,
        attrs={"key": "k"},
    ) as writer:
        for i in range(3):
            writer.write_chunk(i, {"pooled": x[4 * i : 4 * i + 4]})
        writer.finish()
    monkeypatch.undo()
    final = path.read_bytes()
    with h5py.File(path, "r") as f:
        ds = f["features/pooled"]
        where = [ds.id.get_chunk_info(i) for i in range(ds.id.get_num_chunks())]
    assert [chunk for chunk, _ in flagged] == [0, 1, 2]
    for chunk, n_synced in flagged:
        at = slice(where[chunk].byte_offset, where[chunk].byte_offset + where[chunk].size)
        assert n_synced > 0 and synced[n_synced - 1][at] == final[at], chunk
    np.testing.assert_array_equal(FeatureStore(path).arrays("pooled")[0], x)


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    import h5py
    from extract_child import LAYERS, NoiseSource
    from featpipe.extract import extract

    cls = getattr(h5py, {cls!r})
    real, count = getattr(cls, {method!r}), [0]

    def killing(self, *args):  # SIGKILL before the n-th call
        count[0] += 1
        if count[0] == {n}:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, *args)

    setattr(cls, {method!r}, killing)
    extract(NoiseSource(12), "toy", LAYERS, out={out!r}, **{fast!r})
    """
)


def _dump(path: Path) -> dict:
    """Every dataset and attribute of a store file but its run records and times."""
    found: dict = {}

    def keep(name, obj):
        if isinstance(obj, h5py.Dataset) and not name.startswith("progress/chunk_"):
            found[name] = obj[:]

    with h5py.File(path, "r") as f:
        f.visititems(keep)
        found["attrs"] = {
            k: str(v) for k, v in f.attrs.items() if k not in ("created", "extraction")
        }
    return found


@pytest.mark.parametrize(
    "cls, method, n",
    [
        ("Dataset", "__setitem__", 2),  # inside the first chunk, one layer written
        ("File", "flush", 3),  # the third chunk's rows written, not yet flushed, no flag set
        ("File", "flush", 6),  # every chunk done, before the store is marked complete
        ("File", "flush", 7),  # "complete" set, not yet flushed
    ],
)
def test_a_killed_extraction_resumes_to_the_uninterrupted_store_bit_for_bit(
    tmp_path, cls, method, n
):
    whole = extract(NoiseSource(12), "toy", LAYERS, out=tmp_path / "whole.h5", **FAST).path
    out = tmp_path / "killed.h5"
    code = KILLER.format(tests=str(TESTS), cls=cls, method=method, n=n, out=str(out), fast=FAST)
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=300)
    assert child.returncode == -9, child.stderr.decode()[-2000:]
    if out.exists():
        killed = FeatureStore(out)
        assert not killed.complete or killed.chunk_done().all()
    resumed = extract(NoiseSource(12), "toy", LAYERS, out=out, **FAST)
    want, got = _dump(whole), _dump(resumed.path)
    assert want.keys() == got.keys()
    for name in want:
        if name == "attrs":
            assert got[name] == want[name]
        else:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def _watch_renames(monkeypatch) -> list[tuple[bytes, bytes]]:
    """(a file's bytes, the same file as its last fsync left it) at each os.replace."""
    synced: dict[str, bytes] = {}
    renamed: list[tuple[bytes, bytes]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        real_fsync(fd)
        name = os.readlink(f"/proc/self/fd/{fd}")
        if Path(name).is_file():  # not the folder, synced for the new name
            synced[name] = Path(name).read_bytes()

    def replace(src, dst):
        renamed.append((Path(src).read_bytes(), synced.get(str(Path(src).resolve()), b"")))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return renamed


def test_a_new_store_is_on_disk_before_it_gets_its_name(tmp_path, monkeypatch):
    """The store is laid out under a temporary name and renamed, without an fsync: after a
    power cut the name could point to never-written blocks, whose zeros pass the checksums of
    samples/label and samples/split (every label 0, every row "train", no error)."""
    renamed = _watch_renames(monkeypatch)
    StoreWriter.create(
        tmp_path / "s.h5",
        ids=["x", "y"],
        labels=np.array([1, 0]),
        splits=np.array([2, 1], np.uint8),
        classes=["a", "b"],
        layers={"pooled": (3, "avg")},
        dtype="float32",
        rows_per_chunk=1,
        attrs={"key": "k"},
    ).close()
    assert len(renamed) == 1
    assert renamed[0][0] == renamed[0][1]


def test_a_consolidated_store_is_on_disk_before_it_gets_its_name(tmp_path, monkeypatch):
    """consolidate renamed its copy without an fsync, the same way (and the parts are gone)."""
    from featpipe.store.consolidate import consolidate

    parted = extract(
        NoiseSource(8), "toy", ["pooled"], out=tmp_path / "p.h5", shard=(0, 1), chunk_rows=2, **FAST
    )
    renamed = _watch_renames(monkeypatch)
    consolidate(parted.path, tmp_path / "one.h5")
    assert len(renamed) == 1 and renamed[0][0] == renamed[0][1]
