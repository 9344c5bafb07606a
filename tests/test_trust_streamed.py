"""Trust review of the heads that work at scale and of exporting: each test failed on the code
before its fix (a wrong class list, rows outside a train subset, a store overwritten)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
from extract_child import NoiseSource

from featpipe.cli import main
from featpipe.errors import ConfigError, IncompleteStoreError
from featpipe.extract import extract
from featpipe.extras import has_extra
from featpipe.heads import (
    NystroemClassifier,
    StreamingLinearHead,
    StreamingLogisticProbe,
    faiss_knn,
)
from featpipe.store import FeatureStore, StoreWriter, TrainSubset, write_arrays
from featpipe.store.consolidate import consolidate
from featpipe.store.export import export_features

SPLITS = np.array(["train", "val", "test"])


def a_store(path: Path, y: np.ndarray, n_classes: int = 3) -> FeatureStore:
    n = len(y)
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(n, 5)) + y[:, None] * 2.0).astype(np.float32)
    return write_arrays(
        path, {"pooled": X}, y, SPLITS[np.arange(n) % 3], [f"c{i}" for i in range(n_classes)]
    )


def test_streaming_head_learns_the_classes_of_its_training_rows_only(tmp_path) -> None:
    # fit_store listed every class of the store: a class with no train row became a column of
    # predict_proba, and a train split of one class trained without a word.
    y = np.arange(300) % 2  # classes 0 and 1; class 2 ("c2") has no row at all
    store = a_store(tmp_path / "s.h5", y)
    head = StreamingLinearHead(chunk_rows=32, epochs=2).fit_store(store, "pooled")
    X, y_train = store.arrays("pooled", "train")
    in_memory = StreamingLinearHead(chunk_rows=32, epochs=2).fit(X, y_train)
    assert list(head.classes_) == list(in_memory.classes_) == [0, 1]
    assert head.predict_proba(X).shape == (len(X), 2)

    one = a_store(tmp_path / "one.h5", np.ones(300, dtype=int))
    with pytest.raises(ConfigError, match="at least 2 classes"):
        StreamingLinearHead(chunk_rows=32).fit_store(one, "pooled")


def test_a_train_subset_streams_only_its_own_rows(tmp_path) -> None:
    # TrainSubset handed iter_chunks to the store: every train row, not the subset's, and
    # len() was a TypeError, so heads that stream from a store could not read it.
    y = np.arange(200) // 3 % 3  # rows cycle through the splits, labels change every 3
    store = a_store(tmp_path / "s.h5", y)
    keep = store.ids("train")[5:40:2]
    sub = TrainSubset(store, keep)
    X_sub, y_sub = sub.arrays("pooled", "train")
    for order in (None, [7, 3, 0, 9, 2, 5, 8, 1, 6, 4]):  # 10 blocks of 20 rows
        chunks = list(sub.iter_chunks("pooled", "train", rows=20, order=order))
        X, y = np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])
        got = np.argsort(X[:, 0]) if order else slice(None)  # blocks in another order
        want = np.argsort(X_sub[:, 0]) if order else slice(None)
        np.testing.assert_array_equal(X[got], X_sub[want])
        np.testing.assert_array_equal(y[got], y_sub[want])
        assert len(y) == len(keep)
    val = np.concatenate([c[0] for c in sub.iter_chunks("pooled", "val", rows=20)])
    np.testing.assert_array_equal(val, store.arrays("pooled", "val")[0])

    head = StreamingLinearHead(chunk_rows=16, epochs=1).fit_store(sub, "pooled")
    np.testing.assert_allclose(head.scaler_.mean_, X_sub.mean(0), rtol=1e-5)
    probe = StreamingLogisticProbe(chunk_rows=16, device="cpu", distributed=False)
    probe.fit_store(sub, "pooled")
    np.testing.assert_allclose(probe.preprocessor_[0].mean_, X_sub.mean(0), rtol=1e-5)


def test_a_train_subset_exports_ids_that_match_its_rows(tmp_path) -> None:
    y = np.arange(90) // 3 % 3
    store = a_store(tmp_path / "s.h5", y)
    sub = TrainSubset(store, store.ids("train")[::4])
    out = export_features(sub, "pooled", tmp_path / "sub.npz", split="train")
    with np.load(out) as data:
        assert list(data["ids"]) == sub.ids("train")
        np.testing.assert_array_equal(data["features"], sub.arrays("pooled", "train")[0])


@pytest.mark.parametrize("fmt", ["npz", "parquet"])
def test_export_never_writes_over_the_store_it_reads(tmp_path, fmt) -> None:
    # With force, exporting to the store's own path replaced the store by the export.
    store = a_store(tmp_path / "s.h5", np.arange(30) % 3)
    with pytest.raises(ConfigError, match="store itself"):
        export_features(store, "pooled", store.path, fmt=fmt, force=True)
    assert len(FeatureStore(store.path).arrays("pooled")[0]) == 30


def _writer(path, splits: np.ndarray) -> StoreWriter:
    """A two-class store of one 2-wide float32 layer, 3 rows a chunk, to fill chunk by chunk."""
    n = len(splits)
    return StoreWriter.create(
        path,
        ids=[f"s{i}" for i in range(n)],
        labels=np.arange(n) % 2,
        splits=splits,
        classes=["a", "b"],
        layers={"pooled": (2, "none")},
        dtype="float32",
        rows_per_chunk=3,
        attrs={"key": "k"},
    )


@pytest.mark.parametrize("done", [(0, 1, 2, 3), (0, 2)])
def test_a_train_subset_streams_around_skipped_and_unwritten_rows(tmp_path, done) -> None:
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    with _writer(tmp_path / "s.h5", np.array([0, 0, 1, 0, 0, 2, 0, 0, 0, 1], np.uint8)) as w:
        for i in done:
            start, stop = w.chunk_rows(i)
            skips = {0: "truncated"} if i == 1 else {}  # s3, a row of the subset
            w.write_chunk(i, {"pooled": x[start:stop]}, errors=skips)
        if len(done) == w.n_chunks:
            w.finish()
    sub = TrainSubset(FeatureStore(tmp_path / "s.h5"), ["s0", "s3", "s4", "s7", "s8"])
    incomplete = len(done) < 4
    if incomplete:
        with pytest.raises(IncompleteStoreError):
            next(sub.iter_chunks("pooled", "train"))
    want, _ = sub.arrays("pooled", "train", allow_incomplete=incomplete)
    for rows, order in ((2, None), (2, [4, 1, 3, 0, 2]), (4, [2, 0, 1])):
        chunks = sub.iter_chunks("pooled", "train", rows, order=order, allow_incomplete=incomplete)
        got = np.concatenate([X for X, _ in chunks])
        np.testing.assert_array_equal(np.sort(got, axis=0), np.sort(want, axis=0))


class _FlatIndex:
    """Stands in for a faiss flat index where the extra is not installed: fit_chunks only adds."""

    def __init__(self, dim: int):
        self.ntotal = 0

    def add(self, X: np.ndarray) -> None:
        self.ntotal += len(X)


def test_faiss_knn_refuses_a_label_missing_from_its_classes(monkeypatch) -> None:
    # fit_chunks gave a label not in classes the index of a neighbouring class (searchsorted).
    if not has_extra("faiss"):
        stub = SimpleNamespace(IndexFlatIP=_FlatIndex, IndexFlatL2=_FlatIndex)
        monkeypatch.setattr(faiss_knn, "_faiss", lambda: stub)
    X = np.eye(4, dtype=np.float32)
    knn = faiss_knn.FaissKNeighborsClassifier(1)
    with pytest.raises(ConfigError, match=r"Labels \[5\].*valid: \[0, 2, 7\]"):
        knn.fit_chunks([(X[:2], np.array([0, 2])), (X[2:], np.array([5, 7]))], 4, [0, 2, 7])
    knn.fit_chunks([(X, np.array([0, 2, 7, 2]))], 4, np.array([0, 2, 7]))
    assert list(knn.y_index_) == [0, 1, 2, 1]


@pytest.mark.parametrize("n_components", ["abc", 2.5, 0, True, None])
def test_nystroem_names_a_bad_n_components(n_components) -> None:
    # int("abc") raised a bare ValueError at fit, and 2.5 was cut to 2 without a word.
    X, y = np.random.default_rng(0).normal(size=(20, 3)), np.arange(20) % 2
    want = rf"n_components must be a whole number >= 1.*got {re.escape(repr(n_components))}\."
    with pytest.raises(ConfigError, match=want):
        NystroemClassifier(n_components=n_components).fit(X, y)
    assert NystroemClassifier(n_components=8.0, max_iter=5).fit(X, y).features_.n_components == 8


def test_exporting_an_incomplete_store_says_how_to_finish_it(tmp_path, capsys) -> None:
    # The reader's error told export's caller to "pass allow_incomplete=True", which export
    # (and `featpipe export`) does not take.
    with _writer(tmp_path / "s.h5", np.zeros(6, np.uint8)) as w:
        w.write_chunk(0, {"pooled": np.ones((3, 2), np.float32)})
    store, out = FeatureStore(tmp_path / "s.h5"), tmp_path / "f.npz"
    with pytest.raises(IncompleteStoreError) as error:
        export_features(store, "pooled", out)
    message = str(error.value)
    assert "1 of 2 chunks" in message and "featpipe extract" in message
    assert f"featpipe info {store.path}" in message and "allow_incomplete" not in message
    assert not out.exists()
    assert main(["export", str(store.path), "--out", str(out)]) == 2
    assert "allow_incomplete" not in capsys.readouterr().err and not out.exists()


def test_a_consolidated_parted_store_records_its_skipped_rows_as_one_file_does(tmp_path) -> None:
    # finish_parted built the extraction record without "skipped", which the one-file writer
    # records, so a consolidated parted store lacked it.
    source = NoiseSource(12, fail_at=5)
    options = dict(chunk_rows=2, on_error="skip", workers=0, device="cpu", progress=False)
    one = extract(source, "toy", ["pooled"], out=tmp_path / "one.h5", **options)
    parted = extract(source, "toy", ["pooled"], out=tmp_path / "p.h5", shard=(0, 1), **options)
    merged = consolidate(parted.path, tmp_path / "merged.h5")
    want, got = one.attrs["extraction"], merged.attrs["extraction"]
    assert want["skipped"] == got["skipped"] == parted.attrs["extraction"]["skipped"] == 1
    assert set(want) <= set(got)  # the parted record adds parts, filled_by and completed_by
    # A parted store finished before the record had it: consolidate adds the count.
    with h5py.File(parted.path, "r+") as f:
        record = json.loads(f.attrs["extraction"])
        record.pop("skipped", None)
        f.attrs["extraction"] = json.dumps(record)
    older = consolidate(parted.path, tmp_path / "older.h5")
    assert older.attrs["extraction"]["skipped"] == 1
