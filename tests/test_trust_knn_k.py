"""kNN's k is capped at the rows it is fitted on: selection must validate, report and refit
the k that really ran."""

from __future__ import annotations

import numpy as np
import pytest

from featpipe.heads import select_and_fit
from featpipe.store import write_arrays


def _data(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    y = np.arange(n) % 2
    return (rng.normal(size=(n, 3)) + 3 * y[:, None]).astype(np.float32), y


def test_the_refit_uses_the_k_that_was_validated_not_a_larger_one() -> None:
    # 6 train rows: k=10 and k=20 both ran as k=6 and tied; the refit on 6 + 4 rows used
    # k=10, a model never validated, and reported n_neighbors=10.
    rng = np.random.default_rng(0)
    data = {"train": _data(rng, 6), "val": _data(rng, 4), "test": _data(rng, 8)}
    result = select_and_fit("knn", data, grid={"n_neighbors": [1, 5, 10, 20]})
    ks = [p["n_neighbors"] for p, _ in result.curve]
    assert ks == [1, 5, 6]  # 10 and 20 ran as 6: one candidate
    assert result.estimator.classifier_.n_neighbors == result.params["n_neighbors"]
    assert result.params["n_neighbors"] in ks


def test_cross_validation_caps_k_at_the_smallest_fold() -> None:
    rng = np.random.default_rng(1)
    data = {"train": _data(rng, 9), "test": _data(rng, 4)}
    result = select_and_fit("knn", data, grid={"n_neighbors": [3, 50]}, cv=3)
    assert [p["n_neighbors"] for p, _ in result.curve] == [3, 6]
    assert result.estimator.classifier_.n_neighbors == result.params["n_neighbors"]


def test_streamed_knn_caps_k_at_the_train_rows(tmp_path) -> None:
    pytest.importorskip("faiss")
    rng = np.random.default_rng(2)
    parts = {"train": _data(rng, 6), "val": _data(rng, 4), "test": _data(rng, 4)}
    X = np.concatenate([parts[s][0] for s in parts])
    y = np.concatenate([parts[s][1] for s in parts])
    splits = [s for s in parts for _ in range(len(parts[s][1]))]
    store = write_arrays(tmp_path / "s.h5", {"pooled": X}, y, splits, ["a", "b"])
    result = select_and_fit("knn_faiss", store, "pooled", grid={"n_neighbors": [2, 10, 20]})
    assert [p["n_neighbors"] for p, _ in result.curve] == [2, 6]
    assert result.estimator.classifier_.n_neighbors == result.params["n_neighbors"]
