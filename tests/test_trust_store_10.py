"""Trust sweep of the feature store, round 3: checksums on the samples and progress datasets
(a flipped bit in a label or a done flag was a silent wrong number), read locks that keep
`featpipe cache prune` from deleting a store being read, and consolidate of a damaged part."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import make_chunked_store, python_child
from extract_child import NoiseSource

from featpipe.cli import main
from featpipe.errors import UnreadableStoreError
from featpipe.extract import extract
from featpipe.store import FeatureStore
from featpipe.store.cache import remove, scan
from featpipe.store.consolidate import consolidate
from featpipe.store.lock import NoReaders, StoreLock, being_read
from featpipe.store.writer import StoreWriter

FAST = dict(workers=0, device="cpu", progress=False, batch_size=4, dtype="float32")


def _flip(path: Path, name: str, at: int) -> None:
    """Flip the lowest bit of byte ``at`` of the stored data of dataset ``name`` (as a failing
    disk or a bad copy would), leaving every HDF5 structure intact."""
    with h5py.File(path, "r") as f:
        ds = f[name]
        offset = ds.id.get_offset() if ds.chunks is None else ds.id.get_chunk_info(0).byte_offset
    with open(path, "r+b") as f:
        f.seek(offset + at)
        byte = f.read(1)[0]
        f.seek(offset + at)
        f.write(bytes([byte ^ 1]))


@pytest.mark.parametrize("name", ["samples/label", "samples/split", "samples/ok"])
def test_a_flipped_bit_in_the_samples_is_an_error_not_a_wrong_label(tmp_path, name):
    """samples/label, split and ok had no checksum: a flipped bit made row 5's label 0
    instead of 1 (or moved it to another split, or skipped it), read without a word."""
    path = tmp_path / "s.h5"
    make_chunked_store(path)
    _flip(path, name, at=40 if name == "samples/label" else 5)
    store = FeatureStore(path)
    with pytest.raises(UnreadableStoreError, match=r"s\.h5 is not a readable .*--overwrite"):
        store.arrays("pooled", "train")
    with h5py.File(path, "r") as f, pytest.raises(OSError):
        f[name][:]  # plain h5py checks it too


def test_a_flipped_done_flag_is_an_error_not_a_chunk_taken_as_written(tmp_path, capsys):
    """progress/chunk_done had no checksum: a flipped bit marked an unwritten chunk done, and
    its unspecified rows were read (and never extracted on resume)."""
    path = tmp_path / "s.h5"
    make_chunked_store(path, done=3)
    _flip(path, "progress/chunk_done", at=3)
    with pytest.raises(UnreadableStoreError, match="--overwrite"):
        FeatureStore(path).arrays("pooled", allow_incomplete=True)
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--overwrite" in err


def test_rewriting_a_chunk_keeps_the_checksummed_flags_in_place(tmp_path):
    """Setting a chunk's ok flags and progress entries rewrites their checksummed chunks in
    place: no HDF5 metadata changes, so a kill mid-write cannot damage the file."""
    path = tmp_path / "s.h5"
    x = make_chunked_store(path)
    names = ["samples/ok", "progress/chunk_done"]

    def chunks(f):
        return {
            n: [f[n].id.get_chunk_info(i) for i in range(f[n].id.get_num_chunks())] for n in names
        }

    with h5py.File(path, "r") as f:
        assert all(f[n].fletcher32 for n in [*names, "samples/label", "samples/split"])
        where = chunks(f)
        feature = f["features/pooled"].id.get_chunk_info(1)
        ours = [(c.byte_offset, c.size) for n in names for c in where[n]]
        ours.append((feature.byte_offset, feature.size))
        for name in ("progress/chunk_seconds", "progress/chunk_run"):  # the cost records
            ours.append((f[name].id.get_offset(), f[name].id.get_storage_size()))
    before = np.frombuffer(path.read_bytes(), np.uint8)
    with StoreWriter.open(path) as w:
        w.write_chunk(1, {"pooled": -x[10:20]})
    changed = np.flatnonzero(before != np.frombuffer(path.read_bytes(), np.uint8))
    with h5py.File(path, "r") as f:
        assert chunks(f) == where
    outside = [i for i in changed if not any(a <= i < a + n for a, n in ours)]
    assert len(changed) and not outside
    assert np.array_equal(FeatureStore(path).arrays("pooled")[0][10:20], -x[10:20])


def test_a_store_without_checksummed_samples_still_reads_and_resumes(tmp_path):
    """Stores made before these checksums (contiguous samples and progress) read and resume
    as before."""
    path = tmp_path / "old.h5"
    x = make_chunked_store(path, done=3)
    with h5py.File(path, "r+") as f:  # laid out as an older featpipe did
        for name in [
            "samples/label",
            "samples/split",
            "samples/ok",
            "progress/chunk_done",
            "progress/chunk_seconds",
            "progress/chunk_run",
        ]:
            data, attrs = f[name][()], dict(f[name].attrs)
            del f[name]
            f.create_dataset(name, data=data).attrs.update(attrs)
    with StoreWriter.open(path) as w:
        w.write_chunk(3, {"pooled": x[30:]})
        w.finish()
    X, y = FeatureStore(path).arrays("pooled")
    assert np.array_equal(X, x) and np.array_equal(y, np.arange(40) % 2)


def test_a_parted_store_checksums_its_samples_and_the_parts_flags(tmp_path):
    """The top-level file of a parted store and each part file carry the checksums too."""
    out = tmp_path / "p.h5"
    extract(NoiseSource(40), "toy", ["pooled"], out=out, chunk_rows=2, shard=(0, 1), **FAST)
    store = FeatureStore(out)
    assert store.parts and store.complete
    with h5py.File(out, "r") as f:
        assert f["samples/label"].fletcher32 and f["samples/split"].fletcher32
    with h5py.File(store.parts[0].path, "r") as f:
        assert f["samples/ok"].fletcher32 and f["progress/chunk_done"].fletcher32
    _flip(out, "samples/label", at=0)
    with pytest.raises(UnreadableStoreError, match="--overwrite"):
        FeatureStore(out).labels()


def test_a_consolidated_store_keeps_the_checksums(tmp_path):
    """consolidate copied samples/label, split, ok and chunk_done without a checksum."""
    out = tmp_path / "p.h5"
    extract(NoiseSource(40), "toy", ["pooled"], out=out, chunk_rows=2, shard=(0, 1), **FAST)
    one = consolidate(out, tmp_path / "one.h5")
    names = ["samples/label", "samples/split", "samples/ok", "progress/chunk_done"]
    with h5py.File(one.path, "r") as f:
        assert all(f[name].fletcher32 for name in names)
    assert np.array_equal(one.labels(), FeatureStore(out).labels())


def _extracted(path: Path) -> np.ndarray:
    """A complete store with the lock file that extraction leaves beside it."""
    x = make_chunked_store(path)
    with StoreLock(path):
        pass
    return x


def test_prune_all_keeps_a_store_a_head_is_reading(tmp_path, capsys):
    """Readers took no lock: `featpipe cache prune --all` deleted a store between two reads
    of a head training from it (the next read failed: 's.h5 is gone')."""
    path = tmp_path / "s.h5"
    x = _extracted(path)
    store = FeatureStore(path)
    blocks = store.iter_chunks("pooled", rows=10)  # a head half-way through its epoch
    next(blocks)
    assert main(["cache", "list", str(tmp_path)]) == 0
    assert "in use (being read by another process)" in capsys.readouterr().out
    assert main(["cache", "prune", str(tmp_path), "--all", "--yes"]) == 0
    assert "in use, kept: s.h5" in capsys.readouterr().out
    assert path.exists() and np.array_equal(np.concatenate([X for X, _ in blocks]), x[10:])
    store.close()  # done reading: prune may delete it now, with every file of it
    assert main(["cache", "prune", str(tmp_path), "--all", "--yes"]) == 0
    assert list(tmp_path.iterdir()) == []


def test_a_reader_started_after_a_prune_looked_is_not_deleted(tmp_path):
    """remove() checks the readers again while it holds the store's locks: a store a reader
    opened after prune listed it is kept."""
    path = tmp_path / "s.h5"
    _extracted(path)
    (entry,) = [e for e in scan(tmp_path) if e.is_store]
    assert entry.state == "complete"
    store = FeatureStore(path)
    assert not remove(entry) and path.exists()
    del store  # a reader dropped without close() releases its lock too
    assert remove(entry) and not path.exists()


def test_readers_never_wait_and_leave_no_file(tmp_path):
    """Readers share the lock (two at once, in one process or a copy sent to another), a
    reader started while prune deletes reads without it instead of waiting, plain h5py reads
    as before, and the last reader removes its lock file (a store without a lock file:
    tests/test_trust_store_11.py)."""
    path = tmp_path / "s.h5"
    _extracted(path)
    first, second = FeatureStore(path), FeatureStore(path)
    copy = pickle.loads(pickle.dumps(first))
    with h5py.File(path, "r") as f:
        assert f["samples/label"][3] == 1
    assert all(s._read_lock.held for s in (first, second, copy))
    for store in (first, second, copy):
        assert (tmp_path / "s.h5.read.lock").exists()
        store.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5", "s.h5.lock"]
    with NoReaders(path):  # a prune deleting the store now
        late = FeatureStore(path)
        assert not late._read_lock.held and late.labels()[3] == 1


READER = """
import sys
from featpipe.store import FeatureStore
store = FeatureStore(sys.argv[1])
print(store.labels()[3], flush=True)
sys.stdin.read()  # reading until the test closes stdin
print(len(store.arrays("pooled")[0]), flush=True)
"""


def test_prune_keeps_a_store_another_process_is_reading(tmp_path, capsys):
    """The same across processes: the store stays while the reader lives, and its read
    after the prune finds every row."""
    path = tmp_path / "s.h5"
    _extracted(path)
    reader = python_child(READER, str(path))
    try:
        assert reader.stdout.readline().strip() == "1"
        assert main(["cache", "prune", str(tmp_path), "--all", "--yes"]) == 0
        assert "in use, kept: s.h5" in capsys.readouterr().out
        out, _ = reader.communicate("", timeout=60)
    finally:
        reader.kill()
    assert out.strip() == "40" and reader.returncode == 0
    assert main(["cache", "prune", str(tmp_path), "--all", "--yes"]) == 0
    assert not path.exists()


def test_consolidate_of_a_damaged_part_is_one_error_and_writes_nothing(tmp_path, capsys):
    """consolidate read the parts through h5py directly: a part's damaged B-tree or a chunk
    failing its checksum outside the features ended in h5py's OSError (a traceback)."""
    out = tmp_path / "p.h5"
    extract(NoiseSource(40), "toy", ["pooled"], out=out, chunk_rows=2, shard=(0, 1), **FAST)
    part = FeatureStore(out).parts[1].path
    intact = part.read_bytes()
    damaged = bytearray(intact)
    at = intact.index(b"TREE", intact.index(b"TREE") + 1)  # the second B-tree
    damaged[at : at + 4] = b"XXXX"
    part.write_bytes(bytes(damaged))
    one = tmp_path / "one.h5"
    assert main(["consolidate", str(out), "--out", str(one)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "p.h5 is not a readable" in err and "--overwrite" in err
    part.write_bytes(intact)
    _flip(part, "samples/ok", at=1)
    assert main(["consolidate", str(out), "--out", str(one)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.h5", "p.h5.lock", "p.parts"]


def test_a_forked_child_dropping_a_store_keeps_its_parents_read_lock(tmp_path):
    """A forked child (a data-loader worker) shares its parent's lock file: releasing its
    copy deleted the file while the parent still read, and prune then deleted the store."""
    path = tmp_path / "s.h5"
    _extracted(path)
    store = FeatureStore(path)
    pid = os.fork()
    if pid == 0:  # the child drops its copy of the store, then exits
        store.close()
        os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    assert being_read(path) and (tmp_path / "s.h5.read.lock").exists()
    store.close()
    assert not being_read(path) and not (tmp_path / "s.h5.read.lock").exists()
