"""Trust review of the heads that work at scale and of exporting: each test failed on the code
before its fix (a wrong class list)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from featpipe.errors import ConfigError
from featpipe.heads import StreamingLinearHead
from featpipe.store import FeatureStore, write_arrays

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
