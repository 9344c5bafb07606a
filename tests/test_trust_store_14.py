"""Trust sweep, store parts: a part file that lost a dataset its top-level file maps."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from extract_child import NoiseSource
from test_trust_store_13 import OPTIONS, _parted

from featpipe.cli import main
from featpipe.errors import UnreadableStoreError
from featpipe.extract import extract
from featpipe.store import FeatureStore


def test_a_part_that_lost_its_features_is_refused_not_read_as_zeros(tmp_path, capsys):
    """A complete parted store whose part file lost features/<layer> (h5py del) read zeros
    for that part's rows: arrays() returned them and `featpipe info` exited 0."""
    out = tmp_path / "p.h5"
    store = _parted(out)
    X = store.arrays("pooled")[0]
    part = store.parts[1].path
    store.close()
    with h5py.File(part, "r+") as f:
        del f["features/pooled"]
    with pytest.raises(UnreadableStoreError, match=r"part-00001.h5, part 1 of the parted") as e:
        FeatureStore(out).arrays("pooled")
    assert "no features/pooled dataset" in str(e.value) and "Delete that file" in str(e.value)
    assert main(["info", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "part 1 of the parted store" in err
    part.unlink()  # the fix the message gives: only that part is recomputed
    again = extract(NoiseSource(16), "toy", ["pooled"], out=out, shard=(0, 1), chunk_rows=2,
                    **OPTIONS)  # fmt: skip
    np.testing.assert_array_equal(again.arrays("pooled")[0], X)


@pytest.mark.parametrize("lost", ["features/pooled", "samples/ok", "progress/chunk_seconds"])
def test_a_pending_part_that_lost_a_dataset_is_named_when_the_store_resumes(tmp_path, lost):
    """Resuming a parted store (the other task of --shard 0/2, 1/2) whose pending part lost a
    mapped dataset ended in h5py's KeyError traceback, or, for a progress dataset, in
    "free some space (or fix the disk)"."""
    out = tmp_path / "p.h5"
    run = dict(out=out, chunk_rows=2, **OPTIONS)
    extract(NoiseSource(16), "toy", ["pooled"], shard=(0, 2), **run).close()
    part = tmp_path / "p.parts" / "part-00001.h5"
    with h5py.File(part, "r+") as f:
        del f[lost]
    with pytest.raises(UnreadableStoreError) as caught:
        extract(NoiseSource(16), "toy", ["pooled"], shard=(1, 2), **run)
    said = str(caught.value)
    assert "part-00001.h5, part 1 of the parted store" in said, said
    assert f"no {lost} dataset" in said and "Delete that file" in said
    part.unlink()
    assert extract(NoiseSource(16), "toy", ["pooled"], shard=(1, 2), **run).complete
