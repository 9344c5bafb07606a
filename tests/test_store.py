"""The HDF5 feature store: layout, round trips, incomplete stores, keys, failed writes,
damaged files."""

from __future__ import annotations

import errno
import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
from filelock import FileLock

from featpipe.cli import main
from featpipe.errors import (
    ConfigError,
    IncompleteStoreError,
    NonFiniteFeaturesError,
    StoreInUseError,
    StoreMismatchError,
    StoreWriteError,
    UnknownNameError,
    UnreadableStoreError,
)
from featpipe.store import (
    FeatureStore,
    StoreWriter,
    TrainSubset,
    store_filename,
    store_key,
    write_arrays,
)
from featpipe.store.lock import StoreLock, lock_path, owner_path

SPLITS = ["train"] * 6 + ["val"] * 2 + ["test"] * 3


def _features(n=11, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "pooled": rng.normal(size=(n, 5)).astype(np.float32),
        "stage1:grid:2": rng.normal(size=(n, 8)).astype(np.float32),
    }


def _partial_store(path, done_chunks=(0, 2), n=10, rows=3, splits=None, skips=None):
    """A store of 4 chunks (3+3+3+1 rows) with only ``done_chunks`` written; ``skips`` maps
    rows to why their image was skipped."""
    x = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    skips = skips or {}
    with StoreWriter.create(
        path,
        ids=[f"s{i}" for i in range(n)],
        labels=np.arange(n) % 2,
        splits=np.zeros(n, np.uint8) if splits is None else np.asarray(splits, np.uint8),
        classes=["a", "b"],
        layers={"pooled": (2, "none")},
        dtype="float32",
        rows_per_chunk=rows,
        attrs={"key": "k"},
    ) as w:
        for i in done_chunks:
            start, stop = w.chunk_rows(i)
            errors = {row - start: why for row, why in skips.items() if start <= row < stop}
            w.write_chunk(i, {"pooled": x[start:stop]}, errors=errors)
        assert w.skipped_count() == sum(row // rows in done_chunks for row in skips)
        if len(done_chunks) == w.n_chunks:
            w.finish()
    return x


def test_from_arrays_round_trip(tmp_path):
    feats = _features()
    labels = np.array([0, 1, 2] * 3 + [0, 1])
    store = write_arrays(
        tmp_path / "s.h5",
        feats,
        labels,
        SPLITS,
        ["a", "b", "c"],
        ids=[f"img{i}" for i in range(11)],
        attrs={"backbone": {"spec": "toy"}},
    )
    assert store.complete and len(store) == 11
    assert store.layers == ["pooled", "stage1:grid:2"]
    assert store.classes == ["a", "b", "c"]
    assert store.split_counts() == {"train": 6, "val": 2, "test": 3}
    assert store.layer_info("stage1:grid:2") == {"dim": 8, "pooling": "grid:2", "dtype": "float32"}
    X, y = store.arrays("pooled", split="val")
    np.testing.assert_array_equal(X, feats["pooled"][6:8])
    np.testing.assert_array_equal(y, labels[6:8])
    assert store.ids("test") == ["img8", "img9", "img10"]
    np.testing.assert_array_equal(store.labels(), labels)
    assert store.attrs["backbone"] == {"spec": "toy"}
    info = store.info()
    assert info["chunks_done"] == info["chunks_total"] == 1
    assert info["layers"]["pooled"]["shape"] == [11, 5]


def test_plain_h5py_reads_everything(tmp_path):
    feats = _features()
    write_arrays(tmp_path / "s.h5", feats, [0] * 11, [0] * 11, ["a"], dtype="float16")
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert f.attrs["format"] == "featpipe.store" and f.attrs["format_version"] == 2
        assert bool(f.attrs["complete"])
        ds = f["features/pooled"]
        assert ds.dtype == np.float16 and ds.chunks[1] == 5
        np.testing.assert_allclose(ds[:], feats["pooled"], rtol=1e-3, atol=1e-3)
        assert list(f["samples/split"].attrs["names"]) == ["train", "val", "test"]
        assert f["progress/chunk_done"][:].all()
        assert f["samples/id"].asstr()[0] == "00"  # 11 rows: ids padded to sort as numbers
        assert f["samples/ok"][:].all() and f["samples/error"].asstr()[3] == ""


def test_split_codes_and_names_give_the_same_store(tmp_path):
    feats = _features()
    codes = [{"train": 0, "val": 1, "test": 2}[s] for s in SPLITS]
    a = write_arrays(tmp_path / "a.h5", feats, [0] * 11, SPLITS, ["a"])
    b = write_arrays(tmp_path / "b.h5", feats, [0] * 11, codes, ["a"])
    assert a.split_counts() == b.split_counts() and a.key == b.key


def test_unknown_layer_and_split_list_the_valid_ones(tmp_path):
    store = write_arrays(tmp_path / "s.h5", _features(), [0] * 11, SPLITS, ["a"])
    with pytest.raises(UnknownNameError, match="pooled"):
        store.arrays("poold")
    with pytest.raises(UnknownNameError, match="train, val"):
        store.arrays("pooled", split="training")


def test_incomplete_store_is_refused_unless_allowed(tmp_path):
    x = _partial_store(tmp_path / "p.h5")
    store = FeatureStore(tmp_path / "p.h5")
    assert not store.complete
    with pytest.raises(IncompleteStoreError, match="2 of 4 chunks"):
        store.arrays("pooled")
    with pytest.raises(IncompleteStoreError):
        next(store.iter_chunks("pooled"))
    X, y = store.arrays("pooled", allow_incomplete=True)
    rows = [0, 1, 2, 6, 7, 8]  # chunks 0 and 2
    np.testing.assert_array_equal(X, x[rows])
    np.testing.assert_array_equal(y, np.array(rows) % 2)
    assert store.info()["chunks_done"] == 2


def test_finish_refuses_missing_chunks_and_resume_completes(tmp_path):
    x = _partial_store(tmp_path / "p.h5")
    with StoreWriter.open(tmp_path / "p.h5") as w:
        assert w.pending_chunks() == [1, 3]
        with pytest.raises(ConfigError, match="2 of 4 chunks"):
            w.finish()
        for i in w.pending_chunks():
            start, stop = w.chunk_rows(i)
            w.write_chunk(i, {"pooled": x[start:stop]})
        w.write_chunk(0, {"pooled": x[0:3]})  # rewriting a done chunk is harmless
        w.finish()
    store = FeatureStore(tmp_path / "p.h5")
    assert store.complete
    np.testing.assert_array_equal(store.arrays("pooled")[0], x)


def test_write_chunk_checks_shape_and_layers(tmp_path):
    _partial_store(tmp_path / "p.h5", done_chunks=())
    with StoreWriter.open(tmp_path / "p.h5") as w:
        with pytest.raises(ConfigError, match="shape"):
            w.write_chunk(3, {"pooled": np.zeros((3, 2))})  # last chunk has 1 row
        with pytest.raises(ConfigError, match="lacks"):
            w.write_chunk(0, {})
        assert w.pending_chunks() == [0, 1, 2, 3]


def _store_with_skips(path):
    """A complete store with splits train x6, val x2, test x2, and rows 1 (train), 4 (train)
    and 8 (test) skipped."""
    return _partial_store(
        path,
        done_chunks=(0, 1, 2, 3),
        splits=[0] * 6 + [1] * 2 + [2] * 2,
        skips={1: "truncated file", 4: "empty file", 8: "not an image"},
    )


def test_skipped_rows_are_left_out_of_every_read(tmp_path):
    x = _store_with_skips(tmp_path / "s.h5")
    store = FeatureStore(tmp_path / "s.h5")
    kept = [0, 2, 3, 5, 6, 7, 9]
    assert len(store) == 10
    assert store.skipped() == {"s1": "truncated file", "s4": "empty file", "s8": "not an image"}
    assert store.skipped("test") == {"s8": "not an image"}
    assert store.split_counts() == {"train": 4, "val": 2, "test": 1}
    X, y = store.arrays("pooled")
    np.testing.assert_array_equal(X, x[kept])
    np.testing.assert_array_equal(y, np.array(kept) % 2)
    assert store.ids() == [f"s{i}" for i in kept]
    np.testing.assert_array_equal(store.labels(), np.array(kept) % 2)
    for split, rows in {"train": [0, 2, 3, 5], "val": [6, 7], "test": [9]}.items():
        Xs, ys = store.arrays("pooled", split)
        assert store.ids(split) == [f"s{i}" for i in rows]  # ids align with arrays
        np.testing.assert_array_equal(Xs, x[rows])
        np.testing.assert_array_equal(store.labels(split), ys)
        blocks = list(store.iter_chunks("pooled", split, rows=2))
        np.testing.assert_array_equal(np.concatenate([b for b, _ in blocks]), x[rows])
    info = store.info()
    assert info["skipped"] == 3 and list(info["skipped_first"]) == ["s1", "s4", "s8"]
    with h5py.File(tmp_path / "s.h5", "r") as f:  # what plain h5py sees
        assert f["samples/ok"][:].tolist() == [i in kept for i in range(10)]
        assert f["samples/error"].asstr()[1] == "truncated file"
        assert f["samples/error"].asstr()[0] == ""
        assert not f["features/pooled"][4].any()  # skipped rows hold zeros


def test_rewriting_a_chunk_clears_an_earlier_skip(tmp_path):
    x = _store_with_skips(tmp_path / "s.h5")
    with StoreWriter.open(tmp_path / "s.h5") as w:
        w.write_chunk(0, {"pooled": x[0:3]})  # the image of row 1 reads now
        w.write_chunk(1, {"pooled": x[3:6]}, errors={1: "permission denied"})
    store = FeatureStore(tmp_path / "s.h5")
    assert store.skipped() == {"s4": "permission denied", "s8": "not an image"}
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert f["samples/error"].asstr()[1] == ""
        np.testing.assert_array_equal(f["features/pooled"][1], x[1])


def test_skips_in_chunks_not_done_are_not_known_yet(tmp_path):
    _partial_store(tmp_path / "p.h5", done_chunks=(0,))
    store = FeatureStore(tmp_path / "p.h5")
    assert store.skipped() == {}  # rows not written yet are not called skipped
    assert store.info()["splits"]["train"] == 10  # nor left out of what the store holds
    assert store.split_counts()["train"] == len(store.ids()) == 3  # the rows arrays() reads


def test_every_read_of_an_incomplete_store_lines_up_with_its_finished_rows(tmp_path):
    # chunks 0 (rows 0-2) and 2 (rows 6-8) done; row 1 skipped; rows 3-5 and 9 not written
    x = _partial_store(
        tmp_path / "p.h5", splits=[0] * 6 + [1] * 2 + [2] * 2, skips={1: "truncated file"}
    )
    store = FeatureStore(tmp_path / "p.h5")
    rows = {"train": [0, 2], "val": [6, 7], "test": [8], None: [0, 2, 6, 7, 8]}
    for split, kept in rows.items():
        X, y = store.arrays("pooled", split, allow_incomplete=True)
        np.testing.assert_array_equal(X, x[kept])
        assert store.ids(split) == [f"s{i}" for i in kept]  # row for row
        np.testing.assert_array_equal(store.labels(split), y)
    assert store.split_counts() == {"train": 2, "val": 2, "test": 1}
    assert store.skipped() == {"s1": "truncated file"}  # unwritten rows are not skipped
    sub = TrainSubset(store, store.ids("train"))  # every train id: the store itself
    for split in rows:
        a, b = (
            sub.arrays("pooled", split, allow_incomplete=True),
            store.arrays("pooled", split, allow_incomplete=True),
        )
        np.testing.assert_array_equal(a[0], b[0])
    X, _ = TrainSubset(store, ["s2", "s4"]).arrays("pooled", allow_incomplete=True)
    np.testing.assert_array_equal(X, x[[2, 6, 7, 8]])


@pytest.mark.parametrize(
    "labels, match",
    [
        ([-1, 0, 1], r"in \[0, 2\) .*'cat', 'dog'.*got -1 at row 0"),
        ([0, 1, 2], r"in \[0, 2\) .*got 2 at row 2"),
        ([0.0, 1.5, 1.0], r"integer class indices; got 1\.5 at row 1"),
    ],
)
def test_labels_that_name_no_class_are_refused(tmp_path, labels, match):
    with pytest.raises(ConfigError, match=match):
        write_arrays(
            tmp_path / "s.h5", {"pooled": np.ones((3, 2))}, labels, ["train"] * 3, ["cat", "dog"]
        )
    assert list(tmp_path.iterdir()) == []


def _as_format_1(path) -> None:
    """Rewrite a store as featpipe wrote it before format 2 (no ok or error datasets)."""
    with h5py.File(path, "r+") as f:
        del f["samples/ok"], f["samples/error"]
        f.attrs["format_version"] = 1


def test_format_1_stores_stay_readable_with_every_row_ok(tmp_path):
    x = _partial_store(tmp_path / "p.h5", done_chunks=(0, 1, 2, 3))
    _as_format_1(tmp_path / "p.h5")
    store = FeatureStore(tmp_path / "p.h5")
    assert store.skipped() == {} and store.info()["skipped"] == 0
    np.testing.assert_array_equal(store.arrays("pooled", allow_incomplete=True)[0], x)
    assert store.ids() == [f"s{i}" for i in range(10)]


def test_format_1_store_cannot_record_a_skip(tmp_path):
    x = _partial_store(tmp_path / "p.h5", done_chunks=(0,))
    _as_format_1(tmp_path / "p.h5")
    with StoreWriter.open(tmp_path / "p.h5") as w:
        w.write_chunk(1, {"pooled": x[3:6]})  # resuming without skips works
        with pytest.raises(StoreMismatchError, match=r"format 1.*--overwrite"):
            w.write_chunk(2, {"pooled": x[6:9]}, errors={0: "truncated file"})
        assert w.pending_chunks() == [2, 3]


def test_create_leaves_no_temporary_file(tmp_path):
    _partial_store(tmp_path / "p.h5")
    assert [p.name for p in tmp_path.iterdir()] == ["p.h5"]


@pytest.mark.parametrize("rows", [1, 3, 4, 100])
def test_iter_chunks_is_bounded_and_complete(tmp_path, rows):
    feats = _features()
    classes = [f"c{i}" for i in range(11)]  # label i marks row i
    store = write_arrays(tmp_path / "s.h5", feats, list(range(11)), SPLITS, classes)
    blocks = list(store.iter_chunks("pooled", rows=rows))
    assert all(len(x) <= rows for x, _ in blocks)
    np.testing.assert_array_equal(np.concatenate([x for x, _ in blocks]), feats["pooled"])
    train = list(store.iter_chunks("pooled", split="train", rows=rows))
    np.testing.assert_array_equal(np.concatenate([y for _, y in train]), np.arange(6))


BASE = dict(
    source_fingerprint="f" * 64,
    backbone_identity={"spec": "toy", "weights_sha256": "w", "preprocessing": {"crop": 32}},
    layers=["pooled", "stage1:avg"],
    dtype="float16",
)


@pytest.mark.parametrize(
    "change",
    [
        {"source_fingerprint": "e" * 64},
        {"backbone_identity": {**BASE["backbone_identity"], "spec": "toy@1"}},
        {"backbone_identity": {**BASE["backbone_identity"], "weights_sha256": "v"}},
        {"backbone_identity": {**BASE["backbone_identity"], "preprocessing": {"crop": 24}}},
        {"layers": ["pooled", "stage1:max"]},
        {"layers": ["pooled"]},
        {"dtype": "float32"},
    ],
)
def test_store_key_changes_with_every_input(change):
    assert store_key(**{**BASE, **change}) != store_key(**BASE)


def test_store_key_is_stable_and_ignores_layer_order():
    key = store_key(**BASE)
    assert len(key) == 16 and int(key, 16) >= 0
    assert key == store_key(**{**BASE, "layers": ["stage1:avg", "pooled"]})


def test_store_filename_is_readable():
    name = store_filename("pets", "timm:convnext_tiny@/some/dir/w.pth", "0123456789abcdef")
    assert name == "pets-timm_convnext_tiny-0123456789abcdef.h5"


# -- writing safely --------------------------------------------------------------------------


def test_a_chunks_flag_is_flushed_only_after_its_rows(tmp_path):
    x = _partial_store(tmp_path / "p.h5", done_chunks=())
    flags_at_flush = []
    with StoreWriter.open(tmp_path / "p.h5") as w:
        flush = w._file.flush

        def recording_flush():
            flags_at_flush.append(bool(w._file["progress/chunk_done"][1]))
            flush()

        w._file.flush = recording_flush
        w.write_chunk(1, {"pooled": x[3:6]})
    # rows first (flag still clear when they are flushed and fsynced), then the flag (at close)
    assert flags_at_flush == [False, False, True]


def test_a_failed_write_leaves_the_flag_clear_and_says_what_is_safe(tmp_path):
    x = _partial_store(tmp_path / "p.h5", done_chunks=(0,))
    with StoreWriter.open(tmp_path / "p.h5") as w:
        flush = w._file.flush

        def full_disk():
            raise OSError(errno.ENOSPC, "No space left on device")

        w._file.flush = full_disk
        with pytest.raises(StoreWriteError) as err:
            w.write_chunk(1, {"pooled": x[3:6]})
        w._file.flush = flush
    message = str(err.value)
    assert str(tmp_path / "p.h5") in message and "no space left on device" in message
    assert "1 of 4 chunks are written and safe" in message and "\n" not in message
    assert err.value.errno == errno.ENOSPC
    assert FeatureStore(tmp_path / "p.h5").chunk_done().tolist() == [True, False, False, False]


def test_rewriting_a_done_chunk_clears_its_flag_first(tmp_path):
    x = _partial_store(tmp_path / "p.h5", done_chunks=(0,))
    with StoreWriter.open(tmp_path / "p.h5") as w:
        writes = []
        w._file.flush = lambda: writes.append(bool(w._file["progress/chunk_done"][0]))
        w.write_chunk(0, {"pooled": x[0:3]})
    assert writes == [False, False, False, True]  # cleared, rows, fsync, flag (at close)


def test_a_store_that_cannot_fit_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr("featpipe.store.files.free_bytes", lambda folder: 300 * 1024)
    with pytest.raises(StoreWriteError, match=r"needs 4\d\d\.\d KiB and 300\.0 KiB is free"):
        StoreWriter.create(
            tmp_path / "big.h5",
            ids=[str(i) for i in range(100)],
            labels=np.zeros(100),
            splits=np.zeros(100),
            classes=["a"],
            layers={"pooled": (512, "none")},
            dtype="float32",
            rows_per_chunk=10,
            attrs={},
        )
    assert not list(tmp_path.iterdir())


def test_resuming_checks_the_space_its_unfinished_chunks_need(tmp_path, monkeypatch):
    _partial_store(tmp_path / "p.h5", done_chunks=(0,))
    monkeypatch.setattr("featpipe.store.files.free_bytes", lambda folder: 1000)
    with pytest.raises(StoreWriteError, match="writing its 3 unfinished chunks needs"):
        StoreWriter.open(tmp_path / "p.h5")


@pytest.mark.parametrize(
    "value, dtype, match",
    [
        (1e5, "float16", r'float16 holds magnitudes up to 65504.*dtype="float32"'),
        (np.inf, "float32", "produced inf"),
        (np.nan, "float16", "produced NaN"),
    ],
)
def test_features_that_are_not_finite_are_refused_naming_the_layer(tmp_path, value, dtype, match):
    feats = _features()
    feats["stage1:grid:2"][4, 3] = value
    with pytest.raises(NonFiniteFeaturesError, match=match) as err:
        write_arrays(tmp_path / "s.h5", feats, [0] * 11, SPLITS, ["a"], dtype=dtype)
    assert "'stage1:grid:2'" in str(err.value) and "rows 4 to 4" in str(err.value)
    assert 'dtype="float32"' not in str(err.value) or value == 1e5
    assert not FeatureStore(tmp_path / "s.h5").chunk_done().any()


def test_cost_sums_every_run_that_wrote_chunks(tmp_path):
    x = _partial_store(tmp_path / "p.h5", done_chunks=(0, 2))
    with StoreWriter.open(tmp_path / "p.h5") as w:
        w.write_chunk(1, {"pooled": x[3:6]}, seconds=2.5)
        w.write_chunk(3, {"pooled": x[9:10]}, seconds=0.5)
        w.finish({"device": "cpu"})
    extraction = FeatureStore(tmp_path / "p.h5").attrs["extraction"]
    first, second = extraction["runs"]
    assert first["images"] == 6 and first["chunks"] == 2  # chunks 0 and 2 (3 rows each)
    assert second == {**second, "images": 4, "chunks": 2, "seconds": 3.0}
    assert extraction["images"] == 10 and extraction["device"] == "cpu"
    assert extraction["seconds"] == pytest.approx(first["seconds"] + 3.0, abs=1e-3)


# -- damaged files ---------------------------------------------------------------------------


def _truncated(path):
    write_arrays(path, _features(200), [0] * 200, [0] * 200, ["a"])
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def _foreign(path):
    with h5py.File(path, "w") as f:
        f["x"] = np.arange(3)


def _not_hdf5(path):
    path.write_text("not an HDF5 file")


@pytest.mark.parametrize(
    "make, reason",
    [
        (_truncated, "the file is truncated"),
        (_foreign, "it is an HDF5 file but not a featpipe store"),
        (_not_hdf5, "it is not an HDF5 file"),
    ],
    ids=["truncated", "foreign-hdf5", "not-hdf5"],
)
def test_a_damaged_or_foreign_file_gives_one_clear_error(tmp_path, make, reason):
    path = tmp_path / "s.h5"
    make(path)
    with pytest.raises(UnreadableStoreError) as err:
        FeatureStore(path)
    message = str(err.value)
    assert message.startswith(f"{path} is not a readable featpipe store: {reason}")
    assert "--overwrite" in message and "\n" not in message


def test_a_store_whose_lock_is_held_is_in_use_not_damaged(tmp_path):
    path = tmp_path / "s.h5"
    _truncated(path)  # e.g. a store another process is still creating
    held = FileLock(str(lock_path(path)))
    held.acquire()
    try:
        owner_path(path).write_text(json.dumps({"pid": 4242, "host": "elsewhere"}))
        with pytest.raises(StoreInUseError) as err:
            FeatureStore(path)
    finally:
        held.release()
    assert "in use by pid 4242 on host elsewhere" in str(err.value)
    assert "overwrite" not in str(err.value)


def test_store_key_depends_on_precision_and_decode_path():
    cpu = {"precision": "fp32", "decode": "pil"}
    cuda = {"precision": "bf16", "decode": "nvjpeg"}
    keys = {
        store_key(**BASE, compute=cpu),
        store_key(**BASE, compute=cuda),
        store_key(**BASE, compute={**cpu, "precision": "bf16"}),
        store_key(**BASE, compute={**cpu, "decode": "nvjpeg"}),
    }
    assert len(keys) == 4
    assert store_key(**BASE, compute=cpu) == store_key(**BASE, compute=dict(reversed(cpu.items())))


def test_a_folder_where_the_lock_cannot_be_made_is_one_clear_error(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(FileLock, "acquire", read_only)
    lock = StoreLock(tmp_path / "s.h5")
    with pytest.raises(StoreWriteError, match=r"Cannot lock .*s\.h5 for writing \(Permission"):
        lock.__enter__()


# A --shard task writing a part, without featpipe's slow import: it holds the part's lock
# (with its note) and has the file open for writing, which HDF5 locks.
HOLD_PART = """
import json, os, sys, h5py
from filelock import FileLock
part, lock, note = sys.argv[1:]
held = FileLock(lock)  # kept: a collected FileLock lets go
held.acquire()
open(note, "w").write(json.dumps({"pid": os.getpid(), "host": "node7"}))
f = h5py.File(part, "r+")
print("ready", flush=True)
sys.stdin.read()
"""


def test_reading_a_parted_store_while_a_part_is_written_says_so(tmp_path, capsys):
    from extract_child import NoiseSource

    from featpipe.extract import extract

    fast = dict(workers=0, device="cpu", progress=False, batch_size=2)
    out = tmp_path / "p.h5"
    extract(NoiseSource(16), "toy", ["pooled"], out=out, chunk_rows=2, shard=(0, 2), **fast)
    store = FeatureStore(out)
    assert not store.complete and len(store.parts) == 2
    part = store.parts[1].path
    writer = subprocess.Popen(
        [sys.executable, "-c", HOLD_PART, *map(str, (part, lock_path(part), owner_path(part)))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout.readline().strip() == "ready"
        reads = [
            store.info,
            store.chunk_done,
            store.ids,
            lambda: store.arrays("pooled", allow_incomplete=True),
        ]
        for read in reads:
            with pytest.raises(StoreInUseError) as err:
                read()
            message = str(err.value)
            assert "being written by another process" in message
            assert f"part-00001.h5 by pid {writer.pid} on host node7" in message
            assert "wait" in message.lower()
        # `featpipe info` shows how far the job got instead.
        assert main(["info", str(out)]) == 0
        shown = capsys.readouterr().out
        assert "being written" in shown
        assert "1 done, 1 being written, 0 pending, of 2" in shown
        assert f"part-00001.h5 by pid {writer.pid} on host node7" in shown
    finally:
        writer.stdin.close()
        writer.wait(timeout=60)
    assert store.chunk_done().sum() == 4  # readable again once the writer is gone


def _parted(path):
    from extract_child import NoiseSource

    from featpipe.extract import extract

    fast = dict(workers=0, device="cpu", progress=False, batch_size=2)
    return extract(NoiseSource(16), "toy", ["pooled"], out=path, chunk_rows=2, shard=(0, 1), **fast)


def test_consolidate_keeps_an_existing_file_unless_forced_and_never_writes_into_its_source(
    tmp_path, capsys
):
    from featpipe.cli import main
    from featpipe.store.consolidate import consolidate
    from featpipe.store.parts import parts_dir

    parted = _parted(tmp_path / "s.h5")
    other = write_arrays(
        tmp_path / "other.h5", {"pooled": np.ones((3, 2))}, [0, 1, 0], ["train"] * 3, ["a", "b"]
    )
    args = ["consolidate", str(parted.path), "--out", str(other.path)]
    assert main(args) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert FeatureStore(other.path).key == other.key  # kept
    assert main([*args, "--force"]) == 0
    assert FeatureStore(other.path).key == parted.key
    X = parted.arrays("pooled")[0]
    np.testing.assert_array_equal(FeatureStore(other.path).arrays("pooled")[0], X)
    part = parts_dir(parted.path) / "part-00000.h5"
    for out in (part, parts_dir(parted.path) / "new.h5", parted.path):
        with pytest.raises(ConfigError, match="the store itself or inside its parts folder"):
            consolidate(parted.path, out, force=True)
    assert sorted(p.name for p in parts_dir(parted.path).iterdir() if p.suffix == ".h5") == [
        "part-00000.h5",
        "part-00001.h5",
    ]
    np.testing.assert_array_equal(FeatureStore(parted.path).arrays("pooled")[0], X)
    assert not list(tmp_path.glob("*.tmp"))
