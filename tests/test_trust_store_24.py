"""``write_arrays(rows_per_chunk=...)``: the store's chunks as plain h5py reads them (the layout in
``featpipe.store.schema``), and a value that cannot size a chunk refused before any file is
written."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from featpipe.errors import ConfigError
from featpipe.store import schema
from featpipe.store.writer import write_arrays

N, D = 20, 3
X = np.arange(N * D, dtype=np.float32).reshape(N, D)


def _write(path, **kw):
    return write_arrays(path, {"pooled": X}, np.arange(N) % 2, ["train"] * N, ["a", "b"], **kw)


@pytest.mark.parametrize(("rows", "chunk"), [(7, 7), (np.int64(5), 5), (N + 5, N), (None, N)])
def test_rows_per_chunk_is_the_hdf5_chunking_plain_h5py_reads(tmp_path, rows, chunk):
    """(rows_per_chunk, D) feature chunks, ok flags checksummed by the same rows; a chunk never
    larger than the store, and min(n, 4096) rows by default."""
    store = _write(tmp_path / "s.h5", rows_per_chunk=rows)
    np.testing.assert_array_equal(store.arrays("pooled", "train")[0], X)
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert f[schema.FEATURES]["pooled"].chunks == (chunk, D)
        assert f[schema.SAMPLES_OK].chunks == (chunk,)
        assert f.attrs["rows_per_chunk"] == (N if rows is None else rows)
        assert f.attrs["n_chunks"] == -(-N // chunk)
        assert f[schema.CHUNK_DONE][:].all() and f.attrs["complete"]


@pytest.mark.parametrize("rows", [0, -3, 2.5, "8", True])
def test_a_rows_per_chunk_that_cannot_size_a_chunk_is_refused_in_one_line(tmp_path, rows):
    with pytest.raises(ConfigError) as caught:
        _write(tmp_path / "s.h5", rows_per_chunk=rows)
    message = str(caught.value)
    assert "\n" not in message
    assert message == (
        "rows_per_chunk (rows per HDF5 chunk of the store) must be a whole number of at least "
        f"1, e.g. 256; got {rows!r}."
    )
    assert list(tmp_path.iterdir()) == []
