"""write_arrays' default ids sort as their row numbers, so a store it writes is in id order
(streamed heads read it once a pass, with no warning); its hashed key covers the ids."""

from __future__ import annotations

import warnings

import numpy as np

from featpipe.heads.streaming import StreamingLinearHead, by_id_read_cost
from featpipe.store import write_arrays


def _store(path, n: int = 120, **kw):
    """``n`` train rows of 4 features, 10 rows to an HDF5 chunk."""
    X = np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32)
    return write_arrays(path, {"pooled": X}, np.arange(n) % 2, ["train"] * n, ["a", "b"],
                        rows_per_chunk=10, **kw)  # fmt: skip


def test_default_ids_keep_a_multi_chunk_store_in_id_order(tmp_path):
    store = _store(tmp_path / "s.h5")
    # As str(i), "10" sorted before "2": a pass by id read about 2.7 times the rows (below
    # the warning's 4, which rows gathered from more of the file reach).
    assert by_id_read_cost(store, 10) == 1.0
    assert np.array_equal(store.id_positions(), np.arange(120))
    assert store.ids()[:3] == ["000", "001", "002"] and store.ids()[-1] == "119"
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        StreamingLinearHead(chunk_rows=10, epochs=1).fit_store(store, "pooled")
    assert not [w for w in record if "far from id order" in str(w.message)]


def test_one_digit_ids_are_unpadded(tmp_path):
    assert _store(tmp_path / "s.h5", n=10).ids() == [str(i) for i in range(10)]


def test_the_hashed_key_covers_the_ids(tmp_path):
    # Heads take their rows in id order: other ids may fit other heads, so the key differs.
    default = _store(tmp_path / "a.h5")
    same = _store(tmp_path / "b.h5", ids=[f"{i:03d}" for i in range(120)])
    other = _store(tmp_path / "c.h5", ids=[f"x{i:03d}" for i in range(120)])
    assert default.key == same.key != other.key
    given = _store(tmp_path / "d.h5", ids=[f"x{i:03d}" for i in range(120)], attrs={"key": "k"})
    assert given.key == "k"  # a key given is kept
