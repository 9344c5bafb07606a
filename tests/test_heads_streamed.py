"""Heads on features larger than RAM: the logistic regression streamed from a store equals the
in-memory one, reads only chunks, and keeps its memory bounded by the chunk size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from featpipe.errors import ConfigError
from featpipe.heads import LogisticProbe, logistic_objective, select_and_fit
from featpipe.heads.registry import default_heads, list_heads, make_head
from featpipe.heads.streamed_logreg import StreamingLogisticProbe
from featpipe.store import FeatureStore, write_arrays

REPO = Path(__file__).resolve().parents[1]
SPLITS = np.array(["train", "val", "test"])


def blobs(n: int, d: int = 12, classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping Gaussian classes on an offset, unscaled scale (standardising matters)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(7).normal(scale=1.0, size=(classes, d))
    y = rng.integers(0, classes, n)
    X = (centres[y] + rng.normal(size=(n, d))) * rng.uniform(0.5, 20, d) + 3.0
    return X.astype(np.float32), y


def a_store(path: Path, n: int = 900, classes: int = 4, **kw) -> FeatureStore:
    """Its rows listed in id order: streamed heads read them in stored chunks, as arrays."""
    X, y = blobs(n, classes=classes, **kw)
    ids = [f"s{i:05d}" for i in range(n)]
    splits, names = SPLITS[np.arange(n) % 3], [f"c{i}" for i in range(classes)]
    return write_arrays(path, {"pooled": X}, y, splits, names, ids=ids)


def objective(head, X: np.ndarray, y: np.ndarray) -> float:
    """scikit-learn's objective of a fitted logistic head at its own preprocessing."""
    clf = head.classifier_
    y_idx = np.searchsorted(clf.classes_, y)
    return logistic_objective(
        head.transform_features(X), y_idx, clf.coef_, clf.intercept_, float(head.C)
    )


def _refuse(*args, **kwargs):
    """Patched over FeatureStore.arrays: streamed heads read chunks only."""
    raise AssertionError("a streamed head read a whole split into memory")


@pytest.mark.parametrize(
    ("classes", "preprocess", "C"),
    [(4, "standardize", 1.0), (4, "standardize", 1e-3), (2, "standardize", 10.0), (4, "l2", 1.0)],
)
def test_streamed_equals_in_memory_on_a_store(tmp_path, classes, preprocess, C) -> None:
    store = a_store(tmp_path / "s.h5", classes=classes)
    X, y = store.arrays("pooled", "train")
    params = {"C": C, "preprocess": preprocess, "tol": 1e-6, "device": "cpu"}
    memory = LogisticProbe(**params).fit(X, y)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FeatureStore, "arrays", _refuse)
        streamed = StreamingLogisticProbe(**params, chunk_rows=64).fit_store(store, "pooled")
    f_memory, f_streamed = objective(memory, X, y), objective(streamed, X, y)
    assert abs(f_streamed - f_memory) <= 1e-6 * f_memory
    X_te, _ = store.arrays("pooled", "test")
    np.testing.assert_array_equal(streamed.predict(X_te), memory.predict(X_te))
    np.testing.assert_allclose(streamed.predict_proba(X_te), memory.predict_proba(X_te), atol=1e-4)
    if preprocess == "standardize":  # the statistics of a streamed pass match StandardScaler's
        for name in ("mean_", "scale_"):
            np.testing.assert_allclose(
                getattr(streamed.preprocessor_[0], name),
                getattr(memory.preprocessor_[0], name),
                rtol=1e-10,
            )


def test_fit_on_arrays_streams_them_the_same_way(tmp_path) -> None:
    store = a_store(tmp_path / "s.h5")
    X, y = store.arrays("pooled", "train")
    on_store = StreamingLogisticProbe(chunk_rows=50, device="cpu").fit_store(store, "pooled")
    on_arrays = StreamingLogisticProbe(chunk_rows=50, device="cpu").fit(X, y)
    np.testing.assert_allclose(on_arrays.classifier_.coef_, on_store.classifier_.coef_, atol=1e-6)
    labels = np.array(["cat", "dog", "emu", "fox"])[y]  # any labels, as scikit-learn's heads
    named = StreamingLogisticProbe(chunk_rows=50, device="cpu").fit(X, labels)
    assert list(named.classes_) == ["cat", "dog", "emu", "fox"]
    np.testing.assert_array_equal(named.predict(X), np.array(named.classes_)[on_store.predict(X)])


def test_a_class_without_training_rows_is_left_out_as_in_memory(tmp_path) -> None:
    X, y = blobs(300)
    y[y == 2] = 1  # class c2 exists in the store but has no rows
    store = write_arrays(tmp_path / "s.h5", {"p": X}, y, ["train"] * 300, ["c0", "c1", "c2", "c3"])
    streamed = StreamingLogisticProbe(chunk_rows=64, device="cpu").fit_store(store, "p")
    memory = LogisticProbe(device="cpu").fit(X, y)
    assert list(streamed.classes_) == list(memory.classes_) == [0, 1, 3]


def test_selection_on_a_store_streams_and_matches_the_in_memory_head(tmp_path) -> None:
    store = a_store(tmp_path / "s.h5")
    grid = {"C": [1e-2, 1e-1, 1.0, 1e-3]}  # any order: the path runs them increasing
    memory = select_and_fit("logreg", store, "pooled", grid=grid, device="cpu")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FeatureStore, "arrays", _refuse)
        streamed = select_and_fit("logreg_stream", store, "pooled", grid=grid, device="cpu")
    assert streamed.params == memory.params and streamed.selection == "val"
    assert [s for _, s in streamed.curve] == [s for _, s in memory.curve]
    np.testing.assert_array_equal(streamed.test_pred, memory.test_pred)
    np.testing.assert_array_equal(streamed.test_labels, memory.test_labels)
    assert streamed.test_ids == memory.test_ids
    assert streamed.test_scores.shape == memory.test_scores.shape


def test_streamed_head_is_registered_but_not_run_by_default() -> None:
    assert "logreg_stream" in list_heads() and "logreg_stream" not in default_heads()
    assert type(make_head("logreg_stream")) is StreamingLogisticProbe


def test_what_a_streamed_head_cannot_do_is_a_config_error(tmp_path) -> None:
    store = a_store(tmp_path / "s.h5")
    with pytest.raises(ConfigError, match=r"cannot apply PCA \(pca=4\)"):
        StreamingLogisticProbe(pca=4).fit_store(store, "pooled")
    with pytest.raises(ConfigError, match="chunk_rows must be >= 1"):
        StreamingLogisticProbe(chunk_rows=0).fit_store(store, "pooled")
    X, y = blobs(90)
    no_val = write_arrays(
        tmp_path / "n.h5", {"p": X}, y, ["train"] * 60 + ["test"] * 30, list("abcd")
    )
    with pytest.raises(ConfigError, match="chooses its parameters on the val split"):
        select_and_fit("logreg_stream", no_val, "p", grid={"C": [0.1, 1.0]})


def _peak_rss_growth(store: Path, head: str, chunk_rows: int) -> dict:
    """Fit in a fresh process; return its peak RSS growth during the fit (bytes)."""
    code = f"""
import json, numpy as np, warnings
warnings.simplefilter("ignore")
from featpipe.store import FeatureStore
from featpipe.heads import LogisticProbe
from featpipe.heads.streamed_logreg import StreamingLogisticProbe

def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

store = FeatureStore({str(store)!r})
args = dict(C=1.0, max_iter=3, device="cpu", n_threads=1)
# one tiny fit first, so that one-time costs (torch's thread pools) are not counted
StreamingLogisticProbe(**args).fit(np.eye(8, 4, dtype=np.float32), np.arange(8) % 2)
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
before = rss("VmRSS:")
if {head!r} == "streamed":
    StreamingLogisticProbe(**args, chunk_rows={chunk_rows}).fit_store(store, "pooled")
else:
    LogisticProbe(**args).fit(*store.arrays("pooled", "train"))
print(json.dumps({{"growth": rss("VmHWM:") - before}}))
"""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _write_random_store(path: Path, n: int, d: int) -> int:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, n)
    X = rng.normal(size=(n, d)).astype(np.float32)
    X[:, :3] += 2 * np.eye(3, dtype=np.float32)[y]
    write_arrays(path, {"pooled": X}, y, ["train"] * n, ["a", "b", "c"])
    return X.nbytes


@pytest.mark.slow
def test_streamed_fit_memory_is_bounded_by_the_chunk_not_the_store(tmp_path) -> None:
    # Two stores of 12,000 and 60,000 rows x 384 float32 (18 and 92 MB), read 1,024 rows
    # (1.5 MB) at a time. The streamed fit's peak memory must not grow with the store, while
    # the in-memory head's grows past the store's size (the measurement can see it).
    small, big = tmp_path / "small.h5", tmp_path / "big.h5"
    small_size = _write_random_store(small, 12_000, 384)
    size = _write_random_store(big, 60_000, 384)
    growth = {
        "streamed, small store": _peak_rss_growth(small, "streamed", chunk_rows=1024)["growth"],
        "streamed, big store": _peak_rss_growth(big, "streamed", chunk_rows=1024)["growth"],
        "in memory, big store": _peak_rss_growth(big, "memory", chunk_rows=1024)["growth"],
    }
    print(f"store sizes {small_size / 2**20:.0f} and {size / 2**20:.0f} MiB; peak RSS growth:",
          ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in growth.items()))  # fmt: skip
    assert growth["in memory, big store"] > size
    # 5x the rows, the same memory (up to allocator noise): none of it scales with the store.
    extra = growth["streamed, big store"] - growth["streamed, small store"]
    assert extra < 0.1 * (size - small_size)
    assert growth["streamed, big store"] < size / 2
