"""Heads on tiny data: a val split too small to tell candidates from a head that predicts one
class, few-shot where every draw is the same, streaming heads on a store with skipped rows,
and cross-validation on classes of two rows."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from featpipe.errors import ConfigError
from featpipe.heads import few_shot, select_and_fit
from featpipe.store import FeatureStore
from featpipe.store.writer import StoreWriter, write_arrays

CENTRES = np.random.default_rng(0).normal(size=(6, 32))


def _rows(per_class: list[int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(per_class)), per_class)
    return (CENTRES[y] * 0.6 + rng.normal(size=(len(y), 32))).astype(np.float32), y


def test_val_rows_of_one_class_warn_that_the_choice_is_no_better_than_one_class():
    # 2 val rows, both of the most common train class: 28 of the 45 C values tie at 100 %.
    # The first (1e-6) won and predicted that class for every test row (17 % on test); the
    # tie now goes to the lowest val log loss (C=10**0.75), and the val rows still cannot
    # tell the candidates from a head that ignores the features.
    data = {"train": _rows([8, 6, 4, 3, 2, 1], 1), "val": _rows([2], 2), "test": _rows([3] * 6, 3)}
    with pytest.warns(UserWarning, match=r"no better than predicting class '0' for every row"):
        result = select_and_fit("logreg", data, device="cpu")
    assert result.val_accuracy == 1.0 and result.params["C"] == pytest.approx(10**0.75)


def test_a_val_split_that_tells_the_candidates_apart_does_not_warn():
    data = {"train": _rows([6] * 6, 1), "val": _rows([3] * 6, 2), "test": _rows([3] * 6, 3)}
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*no better than predicting")
        result = select_and_fit("logreg", data, grid={"C": [0.1, 1.0]}, device="cpu")
    assert result.val_accuracy > 0.5


def _store_with_skips(path) -> FeatureStore:
    """60 rows of 3 classes in chunks of 7 (train 36, val 12, test 12) with a whole chunk of
    train rows and single rows of every split skipped."""
    rng = np.random.default_rng(0)
    y = np.arange(60) % 3
    X = (np.eye(3, 6)[y] * 3 + rng.normal(size=(60, 6))).astype(np.float32)
    skips = {**{row: "not an image" for row in range(7, 14)}, 0: "truncated", 37: "empty"}
    skips[59] = "truncated"
    with StoreWriter.create(
        path,
        ids=[f"s{i}" for i in range(60)],
        labels=y,
        splits=np.repeat(np.arange(3, dtype=np.uint8), [36, 12, 12]),
        classes=["a", "b", "c"],
        layers={"pooled": (6, "none")},
        dtype="float32",
        rows_per_chunk=7,
        attrs={"key": "k"},
    ) as w:
        for i in range(w.n_chunks):
            start, stop = w.chunk_rows(i)
            errors = {r - start: why for r, why in skips.items() if start <= r < stop}
            w.write_chunk(i, {"pooled": X[start:stop]}, errors=errors)
        w.finish()
    return FeatureStore(path)


@pytest.mark.parametrize(
    ("streamed", "in_memory"), [("logreg_stream", "logreg"), ("knn_faiss", "knn")]
)
def test_streaming_heads_read_a_store_with_skipped_rows_as_the_in_memory_heads(
    tmp_path, streamed, in_memory
):
    if streamed == "knn_faiss":
        pytest.importorskip("faiss")
    store = _store_with_skips(tmp_path / "s.h5")
    assert store.split_counts() == {"train": 28, "val": 11, "test": 11}
    grid = {"C": [0.1, 1.0]} if in_memory == "logreg" else None
    a = select_and_fit(streamed, store, "pooled", grid=grid, device="cpu")
    b = select_and_fit(in_memory, store, "pooled", grid=grid, device="cpu")
    assert a.params == b.params and a.test_ids == b.test_ids == store.ids("test")
    np.testing.assert_array_equal(a.test_pred, b.test_pred)
    np.testing.assert_allclose(a.test_scores, b.test_scores, atol=1e-5)


def test_few_shot_with_every_class_of_k_rows_fits_one_draw_not_copies_of_it():
    data = {"train": _rows([1, 1, 1], 1), "test": _rows([2, 2, 2], 3)}
    with pytest.warns(UserWarning, match="every draw takes the same rows; fitting one draw"):
        result = few_shot("logreg", data, k=1, draws=5, device="cpu")
    assert result.draws == 1 and len(result.accuracies) == 1 and result.std is None


def test_few_shot_draws_differ_when_a_class_has_more_than_k_rows():
    data = {"train": _rows([1, 3, 1], 1), "test": _rows([2, 2, 2], 3)}
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*every draw takes the same rows")
        result = few_shot("logreg", data, k=1, draws=4, device="cpu")
    assert result.draws == 4 and len(result.accuracies) == 4


def test_cross_validation_on_classes_of_two_rows_uses_two_folds_and_one_row_is_refused():
    data = {"train": _rows([2, 5, 5], 1), "test": _rows([2, 2, 2], 3)}
    result = select_and_fit("knn", data)
    assert result.selection == "cv2" and result.refit_on == "train"
    with pytest.raises(ConfigError, match="rarest training class has 1 sample"):
        select_and_fit("knn", {"train": _rows([3, 3, 1], 1)})


def test_a_streamed_head_warns_too_naming_the_callers_line(tmp_path):
    y = np.r_[np.arange(30) % 3, [0, 0], np.arange(9) % 3]  # val: 2 rows of class 'a'
    X = (np.eye(3, 6)[y] * 2 + np.random.default_rng(0).normal(size=(41, 6))).astype(np.float32)
    store = chunked_store(tmp_path / "v.h5", X, y, [30, 2, 9], rows_per_chunk=8)
    with pytest.warns(UserWarning, match="predicting class 'a' for every row") as caught:
        select_and_fit("logreg_stream", store, "pooled", grid={"C": [1e-6, 1.0]})
    assert any(w.filename == __file__ for w in caught if "predicting class" in str(w.message))


def chunked_store(path, X, y, sizes: list[int], rows_per_chunk: int) -> FeatureStore:
    """A complete 3-class store of ``pooled`` rows X, train/val/test of ``sizes``, written
    ``rows_per_chunk`` rows a chunk (streamed heads read several chunks)."""
    splits = np.repeat(np.arange(3, dtype=np.uint8), sizes)
    ids = [f"s{i}" for i in range(len(y))]
    return write_arrays(
        path,
        {"pooled": X},
        y,
        splits,
        ["a", "b", "c"],
        ids=ids,
        attrs={"key": "k"},
        rows_per_chunk=rows_per_chunk,
    )
