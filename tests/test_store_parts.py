"""Parted stores in one process: part bounds, --shard job arrays, resume with any split,
missing parts, consolidate, and the one-file store left as it was."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from extract_child import NoiseSource
from filelock import FileLock

from featpipe.cli import main
from featpipe.errors import ConfigError, MissingPartError
from featpipe.extract import extract
from featpipe.store import FeatureStore
from featpipe.store.consolidate import consolidate
from featpipe.store.lock import lock_path
from featpipe.store.parts import MAX_PARTS, part_bounds, parts_dir

FAST = dict(workers=0, device="cpu", progress=False, batch_size=4, dtype="float32")
LAYERS = ["pooled", "stage1:avg"]
COMPARED = (
    "samples/id",
    "samples/label",
    "samples/split",
    "samples/ok",
    "samples/error",
    "classes",
    "progress/chunk_done",
)


def same_store(a: Path, b: Path) -> None:
    """Every dataset a reader uses, bit for bit, read with plain h5py."""
    with h5py.File(a, "r") as f, h5py.File(b, "r") as g:
        assert list(f["features"]) == list(g["features"])
        for name in (*COMPARED, *(f"features/{layer}" for layer in f["features"])):
            assert np.array_equal(f[name][()], g[name][()]), name
        for attr in ("key", "complete", "rows_per_chunk", "n_chunks", "layers", "dtype"):
            assert f.attrs[attr] == g.attrs[attr], attr


@pytest.mark.parametrize(
    ("n_chunks", "starts", "expected"),
    [
        (1, None, [0, 1]),  # tiny: one part
        (7, None, [0, 7]),  # under 2 x MIN_PART_CHUNKS: still one part
        (8, None, [0, 4, 8]),
        (13, None, [0, 4, 9, 13]),  # as even as whole chunks allow
        # shard starts (rows, 10 per chunk) pull boundaries to them when within half a part
        (12, [0, 30, 95, 120], [0, 3, 10, 12]),
        (12, [0, 110], [0, 4, 8, 12]),  # starts far from every boundary change nothing
    ],
)
def test_part_bounds(n_chunks, starts, expected):
    assert part_bounds(n_chunks, 10, starts) == expected


def test_part_bounds_are_capped_and_cover_every_chunk():
    bounds = part_bounds(10**6, 64)
    assert len(bounds) - 1 == MAX_PARTS
    sizes = np.diff(bounds)
    assert sizes.sum() == 10**6 and sizes.max() - sizes.min() <= 1


def test_two_shards_equal_one_file(tmp_path):
    source = NoiseSource(61)
    single = extract(source, "toy", LAYERS, out=tmp_path / "one.h5", chunk_rows=2, **FAST)
    assert single.parts is None  # a plain run keeps the one-file layout
    out = tmp_path / "parted.h5"
    first = extract(source, "toy", LAYERS, out=out, chunk_rows=2, shard=(0, 2), **FAST)
    assert first.parts is not None and not first.complete
    assert first.extraction["filled_by"] == "shard 0/2" and first.extraction["parts_filled"] == 4
    assert FeatureStore(out).info()["parts_pending"] == 3
    second = extract(source, "toy", LAYERS, out=out, chunk_rows=2, shard=(1, 2), **FAST)
    assert second.complete and len(second.parts) == 7  # 31 chunks: parts of 4 or 5
    same_store(single.path, out)
    cost = second.attrs["extraction"]
    assert cost["images"] == 61 and cost["filled_by"] == ["shard 0/2", "shard 1/2"]
    X, _ = second.arrays("pooled", "train")
    assert np.array_equal(X, single.arrays("pooled", "train")[0])


def test_any_split_continues_a_parted_store(tmp_path):
    source = NoiseSource(40)
    single = extract(source, "toy", LAYERS, out=tmp_path / "one.h5", chunk_rows=2, **FAST)
    out = tmp_path / "parted.h5"
    extract(source, "toy", LAYERS, out=out, chunk_rows=2, shard=(2, 3), **FAST)
    # a plain process on a parted store fills what is left, and returns it complete
    store = extract(source, "toy", LAYERS, out=out, chunk_rows=2, **FAST)
    assert store.complete and store.extraction["parts_filled"] == 4
    same_store(single.path, out)
    again = extract(source, "toy", LAYERS, out=out, chunk_rows=2, **FAST)
    assert again.extraction["reused"]


def test_a_missing_part_is_a_clear_error_and_a_rerun_recomputes_it(tmp_path):
    source = NoiseSource(40)
    out = tmp_path / "s.h5"
    single = extract(source, "toy", LAYERS, out=tmp_path / "one.h5", chunk_rows=2, **FAST)
    extract(source, "toy", LAYERS, out=out, chunk_rows=2, shard=(0, 1), **FAST)
    gone = parts_dir(out) / "part-00002.h5"
    gone.unlink()
    with pytest.raises(MissingPartError, match=r"1 of its 5 part files are missing: .*part-00002"):
        FeatureStore(out)
    assert main(["info", str(out)]) == 2  # one line, no traceback, no zeros read
    store = extract(source, "toy", LAYERS, out=out, chunk_rows=2, **FAST)
    assert store.complete and store.extraction["parts_filled"] == 1
    same_store(single.path, out)


def test_a_foreign_part_is_refused(tmp_path):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    extract(NoiseSource(40), "toy", LAYERS, out=a, chunk_rows=2, shard=(0, 1), **FAST)
    extract(NoiseSource(40, seed=1), "toy", LAYERS, out=b, chunk_rows=2, shard=(0, 1), **FAST)
    shutil.copy(parts_dir(b) / "part-00001.h5", parts_dir(a) / "part-00001.h5")
    with pytest.raises(Exception, match="is not part 1 of store"):
        FeatureStore(a)


def test_a_parted_store_moves_with_its_folder(tmp_path, monkeypatch):
    out = tmp_path / "here" / "s.h5"
    extract(NoiseSource(20), "toy", LAYERS, out=out, chunk_rows=2, shard=(0, 1), **FAST)
    X = FeatureStore(out).arrays("pooled")[0]
    shutil.move(tmp_path / "here", tmp_path / "there")
    monkeypatch.chdir(tmp_path / "there" / "s.parts")  # relative paths, not the cwd
    assert np.array_equal(FeatureStore(tmp_path / "there" / "s.h5").arrays("pooled")[0], X)


def test_consolidate_equals_the_parted_store_and_plain_h5py_reads_it(tmp_path):
    source = NoiseSource(30, fail_at=7)
    out = tmp_path / "parted.h5"
    options = dict(chunk_rows=2, on_error="skip", **FAST)
    parted = extract(source, "toy", LAYERS, out=out, shard=(0, 1), **options)
    assert list(parted.skipped()) == ["img0007"]
    assert main(["consolidate", str(out), "--out", str(tmp_path / "one.h5")]) == 0
    moved = tmp_path / "elsewhere" / "one.h5"
    moved.parent.mkdir()
    shutil.move(tmp_path / "one.h5", moved)  # no parts folder beside it
    same_store(out, moved)
    with h5py.File(moved, "r") as f:
        assert not f["features/pooled"].is_virtual and "layout" not in f.attrs
        assert f["samples/error"].asstr()[7] == parted.skipped()["img0007"]
    assert FeatureStore(moved).skipped() == parted.skipped()
    one_file = extract(source, "toy", LAYERS, out=tmp_path / "single.h5", **options)
    same_store(one_file.path, moved)


def test_consolidate_refuses_an_incomplete_or_one_file_store(tmp_path):
    out = tmp_path / "p.h5"
    extract(NoiseSource(40), "toy", LAYERS, out=out, chunk_rows=2, shard=(0, 2), **FAST)
    with pytest.raises(Exception, match="not complete"):
        consolidate(out, tmp_path / "c.h5")
    one = extract(NoiseSource(10), "toy", LAYERS, out=tmp_path / "one.h5", **FAST)
    with pytest.raises(ConfigError, match="already one file"):
        consolidate(one.path, tmp_path / "c.h5")


def test_a_half_written_one_file_store_is_not_continued_in_parts(tmp_path):
    out = tmp_path / "one.h5"
    source = NoiseSource(20)
    from featpipe.extract import plan_extraction, run_extraction

    plan = plan_extraction(source, "toy", LAYERS, out=out, chunk_rows=2, **FAST)
    run_extraction(plan, chunks=[0])
    with pytest.raises(ConfigError, match="one-file store, half written"):
        extract(source, "toy", LAYERS, out=out, chunk_rows=2, shard=(0, 2), **FAST)


@pytest.mark.parametrize("text", ["2/2", "-1/2", "1", "a/b", "0/0"])
def test_a_bad_shard_is_one_line(tmp_path, text, capsys):
    assert main(["extract", "digits", "--out", str(tmp_path / "x.h5"), f"--shard={text}"]) == 2
    assert "A shard is I/N with 0 <= I < N" in capsys.readouterr().err


def test_cache_prune_removes_a_parted_store_with_its_parts(tmp_path):
    extract(NoiseSource(20), "toy", LAYERS, cache_dir=tmp_path, chunk_rows=2, shard=(0, 2), **FAST)
    (store,) = tmp_path.glob("*.h5")
    (parts_dir(store) / "part-00000.h5").unlink()
    assert main(["cache", "list", str(tmp_path)]) == 0  # a missing part is a state, not a crash
    assert main(["cache", "prune", str(tmp_path), "--incomplete", "--yes"]) == 0
    assert not store.exists() and not parts_dir(store).exists()


def test_the_extraction_attribute_records_the_stores_rows_per_chunk(tmp_path):
    out = tmp_path / "p.h5"
    extract(NoiseSource(32), "toy", LAYERS, out=out, shard=(0, 2), chunk_rows=4, **FAST)
    # the second task asks for other chunks: the store keeps its own, and says so
    store = extract(NoiseSource(32), "toy", LAYERS, out=out, shard=(1, 2), chunk_rows=16, **FAST)
    assert store.complete and store.rows_per_chunk == 4
    assert store.attrs["extraction"]["rows_per_chunk"] == 4


def test_shard_overwrite_replaces_only_a_store_of_another_job(tmp_path):
    source, out = NoiseSource(32), tmp_path / "s.h5"
    single = extract(source, "toy", LAYERS, out=tmp_path / "one.h5", chunk_rows=4, **FAST)
    extract(NoiseSource(32, seed=1), "toy", LAYERS, out=out, chunk_rows=4, shard=(0, 1), **FAST)
    job = dict(out=out, chunk_rows=4, overwrite=True, **FAST)  # every task's command line
    first = extract(source, "toy", LAYERS, shard=(0, 2), **job)  # other inputs: replaced
    assert first.extraction["parts_filled"] == 1 and not first.complete
    second = extract(source, "toy", LAYERS, shard=(1, 2), **job)  # this job's store: joined
    assert second.complete and second.extraction["parts_filled"] == 1
    same_store(single.path, out)
    assert extract(source, "toy", LAYERS, shard=(0, 2), **job).extraction["reused"]
    # laid out otherwise (other rows per chunk, one file): not this job's store, replaced
    other = extract(source, "toy", LAYERS, shard=(0, 2), **{**job, "chunk_rows": 2})
    assert other.rows_per_chunk == 2 and not other.complete
    parted = extract(source, "toy", LAYERS, shard=(0, 1), **{**job, "out": single.path})
    assert parted.parts is not None and parted.complete


def test_a_store_whose_parts_folder_is_another_stores_is_refused(tmp_path):
    # x.v1 and x.v2 (or x.h5 and x.hdf5) differ in their last suffix only: one parts folder
    v1, v2 = tmp_path / "run.v1", tmp_path / "run.v2"
    options = dict(shard=(0, 1), chunk_rows=4, **FAST)
    X = extract(NoiseSource(16, seed=1), "toy", LAYERS, out=v1, **options).arrays("pooled")[0]
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match=r"run\.v2 .*run\.parts.* run\.v1\b.*run-v2\.h5"):
            extract(NoiseSource(16, seed=2), "toy", LAYERS, out=v2, overwrite=overwrite, **options)
    assert np.array_equal(FeatureStore(v1).arrays("pooled")[0], X) and not v2.exists()
    assert extract(NoiseSource(16, seed=2), "toy", LAYERS, out=tmp_path / "run-v2.h5", **options)
    # a store being made now (its lock held, no file yet) may become a parted one
    held = FileLock(str(lock_path(tmp_path / "feats.hdf5")))
    held.acquire()
    try:
        with pytest.raises(ConfigError, match=r"feats\.hdf5"):
            extract(NoiseSource(16), "toy", LAYERS, out=tmp_path / "feats.h5", **options)
    finally:
        held.release()
    assert extract(NoiseSource(16), "toy", LAYERS, out=tmp_path / "feats.h5", **options).complete
    assert parts_dir(tmp_path / "feats.h5") == tmp_path / "feats.parts"  # as before
    with pytest.raises(ConfigError, match=r"cannot end in \.parts"):
        extract(NoiseSource(16), "toy", LAYERS, out=tmp_path / "x.parts", **options)


def test_a_part_lock_probed_for_an_instant_is_not_left_unfilled(tmp_path, monkeypatch):
    # `featpipe cache list` learns whether a part is being written by taking and dropping its
    # lock. A shard task that met that instant left the part unfilled, and its job array ended
    # with an incomplete store.
    import threading

    from featpipe.extract import parted
    from featpipe.store.lock import StoreLock

    probed, enter = [], StoreLock.__enter__

    def enter_during_a_probe(self):
        if self.store.name == "part-00001.h5" and not probed:
            held, done = threading.Event(), threading.Event()

            def probe():
                with FileLock(str(lock_path(self.store))):
                    held.set()
                    done.wait(0.01)

            probed.append(threading.Thread(target=probe))
            probed[0].start()
            held.wait()
        return enter(self)

    monkeypatch.setattr(parted.StoreLock, "__enter__", enter_during_a_probe)
    out = tmp_path / "s.h5"
    store = extract(NoiseSource(20), "toy", LAYERS, out=out, chunk_rows=2, shard=(0, 1), **FAST)
    probed[0].join()
    n_parts = len(list(parts_dir(out).glob("part-*.h5")))
    assert store.complete and store.extraction["parts_filled"] == n_parts == 2


def test_a_parted_store_is_not_replaced_by_one_whose_names_cannot_be_stored(tmp_path):
    # The old parts went before the new store's first part refused its ids: both were lost.
    from featpipe.data import ArraySource
    from featpipe.errors import SourceError

    out = tmp_path / "s.h5"
    old = extract(NoiseSource(20), "toy", LAYERS, out=out, chunk_rows=2, shard=(0, 1), **FAST)
    images = np.zeros((20, 8, 8, 3), np.uint8)
    ids = [f"caf\udce9-{i}" for i in range(20)]  # a Latin-1 file name, as Python reads it
    latin = ArraySource(images, np.arange(20) % 2, ids=ids, splits=["train"] * 20)
    with pytest.raises(SourceError, match="not valid UTF-8"):
        extract(latin, "toy", LAYERS, out=out, chunk_rows=2, shard=(0, 1), overwrite=True, **FAST)
    again = FeatureStore(out)
    assert again.complete and again.key == old.key
    assert np.array_equal(again.arrays("pooled")[0], old.arrays("pooled")[0])
