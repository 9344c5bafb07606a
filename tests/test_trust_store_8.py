"""Trust sweep of the feature store: a flipped bit in a feature chunk (checksums), a lock
file that cannot be made, and parts folders that no store maps (`featpipe cache prune`)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import make_chunked_store
from extract_child import NoiseSource
from filelock import FileLock

from featpipe.cli import main
from featpipe.errors import (
    MissingPartError,
    StoreNotFoundError,
    StoreWriteError,
    UnreadableStoreError,
)
from featpipe.extract import extract
from featpipe.store import FeatureStore
from featpipe.store.consolidate import consolidate
from featpipe.store.lock import StoreLock, holder, lock_path
from featpipe.store.parts import parts_dir
from featpipe.store.writer import StoreWriter

FAST = dict(workers=0, device="cpu", progress=False, batch_size=4, dtype="float32")
LAYERS = ["pooled", "stage1:avg"]


def _flip(path: Path, layer: str, chunk: int, at: int = 17) -> None:
    """Flip one bit inside the stored bytes of one chunk of ``layer`` (as a failing disk or a
    bad copy would), leaving every HDF5 structure intact."""
    with h5py.File(path, "r") as f:
        offset = f[f"features/{layer}"].id.get_chunk_info(chunk).byte_offset + at
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x40]))


def test_a_flipped_bit_in_a_feature_chunk_is_an_error_not_a_wrong_number(tmp_path, capsys):
    """A flipped bit inside a feature chunk read back as a wrong number (5.0 as 5.0078125)
    with no error, through featpipe and plain h5py alike."""
    path = tmp_path / "s.h5"
    x = make_chunked_store(path)
    _flip(path, "pooled", chunk=2)
    store = FeatureStore(path)
    with pytest.raises(UnreadableStoreError, match=r"rows 20 to 29 of layer 'pooled' fail their"):
        store.arrays("pooled")
    with pytest.raises(UnreadableStoreError, match="--overwrite"):
        list(store.iter_chunks("pooled", "test"))
    intact = store.iter_chunks("pooled", "train", rows=10)  # chunks 0 and 1 only
    assert np.array_equal(np.concatenate([X for X, _ in intact]), x[:20])
    with h5py.File(path, "r") as f, pytest.raises(OSError):
        f["features/pooled"][20:30]  # plain h5py checks it too
    for command in (["info", str(path)], ["export", str(path), "--out", str(tmp_path / "x.npz")]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "rows 20 to 29" in err, command


def test_rewriting_a_checksummed_chunk_touches_only_its_bytes(tmp_path):
    """The checksum filter keeps every chunk where it was laid out: a chunk written again
    (resume) changes no HDF5 metadata, so a kill mid-write cannot damage the file."""
    path = tmp_path / "s.h5"
    x = make_chunked_store(path)
    with h5py.File(path, "r") as f:
        ds = f["features/pooled"]
        assert ds.fletcher32
        where = [ds.id.get_chunk_info(i) for i in range(4)]
    before = np.frombuffer(path.read_bytes(), np.uint8)
    with StoreWriter.open(path) as w:
        w.write_chunk(1, {"pooled": -x[10:20]})
    changed = np.flatnonzero(before != np.frombuffer(path.read_bytes(), np.uint8))
    # what may change: the chunk, and the raw data of the chunk's flags and records
    allowed = [(where[1].byte_offset, where[1].size)]
    with h5py.File(path, "r") as f:
        assert [f["features/pooled"].id.get_chunk_info(i) for i in range(4)] == where
        for name in ("samples/ok", *(f"progress/{n}" for n in f["progress"])):
            ds = f[name].id  # flags are checksummed chunks too (test_trust_store_10)
            chunks = map(ds.get_chunk_info, range(ds.get_num_chunks())) if f[name].chunks else []
            allowed += [(c.byte_offset, c.size) for c in chunks] or [
                (ds.get_offset(), ds.get_storage_size())
            ]
    outside = [i for i in changed if not any(a <= i < a + n for a, n in allowed)]
    assert len(changed) and not outside
    assert np.array_equal(FeatureStore(path).arrays("pooled")[0][10:20], -x[10:20])


def test_a_store_without_checksums_still_reads_and_resumes(tmp_path):
    """Stores written before the checksum filter keep reading (and resuming) as before."""
    path = tmp_path / "old.h5"
    x = make_chunked_store(path)
    with h5py.File(path, "r+") as f:  # the features as an older featpipe laid them out
        del f["features/pooled"]
        ds = f.create_dataset("features/pooled", data=x, chunks=(10, 8))
        ds.attrs.update(layer="pooled", pooling="avg", dim=8, dtype="float32")
        f["progress/chunk_done"][3] = False
        f.attrs["complete"] = False
    with StoreWriter.open(path) as w:
        w.write_chunk(3, {"pooled": x[30:]})
        w.finish()
    X, _ = FeatureStore(path).arrays("pooled")
    assert np.array_equal(X, x)


def test_a_flipped_bit_in_a_part_names_the_part_and_rewriting_it_repairs_the_store(tmp_path):
    """In a parted store the damaged chunk is in one part file: the error names it, and
    deleting it and running the extraction again rewrites that part only. consolidate
    refuses to copy the damage, and writes a checksummed file."""
    source = NoiseSource(40)
    single = extract(source, "toy", LAYERS, out=tmp_path / "one.h5", chunk_rows=2, **FAST)
    out = tmp_path / "s.h5"
    extract(source, "toy", LAYERS, out=out, chunk_rows=2, shard=(0, 1), **FAST)
    part = parts_dir(out) / "part-00002.h5"
    _flip(part, "stage1:avg", chunk=1, at=5)
    with pytest.raises(UnreadableStoreError, match=rf"Delete {part}") as err:
        FeatureStore(out).arrays("stage1:avg")
    assert "of layer 'stage1:avg'" in str(err.value)
    with pytest.raises(UnreadableStoreError, match="fail their checksum"):
        consolidate(out, tmp_path / "c.h5")
    assert not (tmp_path / "c.h5").exists() and not (tmp_path / "c.h5.tmp").exists()
    part.unlink()
    store = extract(source, "toy", LAYERS, out=out, chunk_rows=2, **FAST)
    assert store.extraction["parts_filled"] == 1
    for layer in LAYERS:
        assert np.array_equal(store.arrays(layer)[0], single.arrays(layer)[0])
    copy = consolidate(out, tmp_path / "c.h5")
    with h5py.File(copy.path, "r") as f:
        assert all(f[f"features/{layer}"].fletcher32 for layer in LAYERS)


def test_out_where_no_lock_file_can_be_made_is_refused_at_once(tmp_path):
    """--out /proc/x.h5 (no file can be made there) waited forever for the store's lock
    (here: until lock_timeout, then 'in use by another process'): filelock took the lock
    file it could not open for one another process holds."""
    out = Path("/proc/featpipe-store-test.h5")
    with pytest.raises(
        StoreWriteError, match=r"Cannot lock .*: /proc/featpipe-store-test\.h5\.lock\)"
    ):
        extract(NoiseSource(8), "toy", ["pooled"], out=out, lock_timeout=5, **FAST)
    with StoreLock(tmp_path / "s.h5"):  # a lock that can be made is still taken
        assert holder(tmp_path / "s.h5") is None  # this process holds it


def _parted(path: Path) -> None:
    extract(NoiseSource(40), "toy", ["pooled"], out=path, chunk_rows=2, shard=(0, 1), **FAST)


def test_a_parts_folder_of_no_store_is_pruned_as_a_leftover(tmp_path, capsys):
    """A parted store consolidated elsewhere and then deleted left its parts folder, which
    `featpipe cache list` never showed and `prune` (even --all) never deleted."""
    _parted(tmp_path / "x.h5")
    consolidate(tmp_path / "x.h5", tmp_path / "y.h5")
    (tmp_path / "x.h5").unlink()
    assert main(["cache", "list", str(tmp_path)]) == 0
    assert re.search(r"^leftover \(parts of no store\) .* x\.parts$", capsys.readouterr().out, re.M)
    assert main(["cache", "prune", str(tmp_path), "--yes"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["y.h5"]
    assert FeatureStore(tmp_path / "y.h5").complete


def test_prune_keeps_parts_folders_a_store_or_a_process_may_use(tmp_path, capsys):
    _parted(tmp_path / "live.h5")  # a parted store's own parts
    _parted(tmp_path / "written.h5")  # its store deleted while a task still writes a part
    (tmp_path / "written.h5").unlink()
    writing = FileLock(str(lock_path(parts_dir(tmp_path / "written.h5") / "part-00001.h5")))
    laid_out = FileLock(str(lock_path(tmp_path / "new.hdf5")))  # laid out now: no file yet
    (tmp_path / "new.parts").mkdir()
    (tmp_path / "new.parts" / "part-00000.h5").write_bytes(b"")
    (tmp_path / "notes.parts").mkdir()  # not featpipe's
    (tmp_path / "notes.parts" / "todo.txt").write_text("keep")
    with writing, laid_out:
        assert main(["cache", "list", str(tmp_path)]) == 0
        listed = capsys.readouterr().out
        assert main(["cache", "prune", str(tmp_path), "--all", "--yes"]) == 0
    assert re.search(r"^in use .* written\.parts$", listed, re.M)
    assert re.search(r"^in use .* new\.parts$", listed, re.M)
    assert "live.parts" not in listed and "notes.parts" not in listed
    kept = ["part-00000.h5", "part-00001.h5"]
    assert all((parts_dir(tmp_path / "written.h5") / name).exists() for name in kept)
    assert (tmp_path / "new.parts" / "part-00000.h5").exists()
    assert (tmp_path / "notes.parts" / "todo.txt").exists()
    assert not (tmp_path / "live.h5").exists() and not (tmp_path / "live.parts").exists()


def test_parts_deleted_while_a_parted_store_is_read_are_an_error_not_zeros(tmp_path):
    """HDF5 reads a part file it cannot open as zeros: parts deleted (cache prune, rm)
    while a head read the store block by block gave 32 of its 40 rows as zeros."""
    _parted(tmp_path / "x.h5")
    store = FeatureStore(tmp_path / "x.h5")
    blocks = store.iter_chunks("pooled", rows=8)
    next(blocks)
    shutil.rmtree(parts_dir(tmp_path / "x.h5"))
    with pytest.raises(MissingPartError, match=r"part files are missing: .*part-0000"):
        list(blocks)
    with pytest.raises(MissingPartError):
        store.chunk_done()  # flags of missing parts read as False


def test_a_store_deleted_after_it_was_opened_is_one_error(tmp_path):
    """Each read opens the file: a store deleted between two reads (cache prune --all while
    a head reads it) raised h5py's FileNotFoundError, a traceback under the CLI."""
    path = tmp_path / "s.h5"
    make_chunked_store(path)
    store = FeatureStore(path)
    path.unlink()
    with pytest.raises(StoreNotFoundError, match=r"s\.h5 is gone: it was deleted or moved"):
        store.arrays("pooled")
