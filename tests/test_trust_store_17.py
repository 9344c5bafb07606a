"""Trust sweep of parted stores' damaged parts: a part HDF5 cannot read named as that part
(delete it alone, also in cache list), a part whose mapped dataset has another shape than the
map refused, and another store's part refused in an incomplete store too."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
from extract_child import NoiseSource
from test_cli_cache import _parted

from featpipe.cli import main
from featpipe.errors import StoreMismatchError, UnreadableStoreError
from featpipe.extract import extract
from featpipe.store import FeatureStore

FAST = dict(workers=0, device="cpu", progress=False, batch_size=4, chunk_rows=4)


def _complete(folder):
    store = extract(NoiseSource(32), "toy", ["pooled"], cache_dir=folder, shard=(0, 1), **FAST)
    assert store.complete and len(store.parts) == 2
    return store.path, [part.path for part in store.parts]


def _another_stores_part(folder, tasks: int):
    """Part 0 of another store (the same images at 48 px), extracted into ``folder`` as task 0
    of ``tasks`` (shard=)."""
    other = extract(
        NoiseSource(32), "toy", ["pooled"], cache_dir=folder, shard=(0, tasks), image_size=48,
        **FAST,
    )  # fmt: skip
    return other.parts[0].path


@pytest.mark.parametrize("complete", [False, True])
def test_a_part_hdf5_cannot_read_is_named_as_a_damaged_part(tmp_path, complete):
    """A part cut short got open_h5's advice for a one-file store ('Delete it, or ...
    --overwrite', which recomputes every part) instead of deleting that part alone."""
    store, parts = _complete(tmp_path) if complete else _parted(tmp_path)
    data = parts[0].read_bytes()
    parts[0].write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableStoreError) as info:
        FeatureStore(store).arrays("pooled", allow_incomplete=True)
    message = str(info.value)
    assert f"part 0 of the parted store {store}" in message
    assert "truncated" in message and "--overwrite" not in message
    assert "Delete that file and run the same extraction again" in message
    assert "\n" not in message


def _reshape_part_layer(part, dim):
    with h5py.File(part, "r+") as p:
        old = p["features/pooled"]
        rows, attrs = old.shape[0], dict(old.attrs)
        del p["features/pooled"]
        p.create_dataset("features/pooled", data=np.ones((rows, dim), old.dtype)).attrs.update(
            attrs
        )


@pytest.mark.parametrize("dim", [64, 16])
def test_a_part_whose_layer_has_another_dimension_than_the_map_is_refused(tmp_path, dim):
    """The map reads the first 32 columns of a 64-wide dataset written there (another layer's
    features, say): arrays() returned those numbers with no error."""
    store, parts = _complete(tmp_path)
    _reshape_part_layer(parts[1], dim)
    with pytest.raises(UnreadableStoreError, match="part 1 of the parted store") as info:
        FeatureStore(store).arrays("pooled")
    assert f"features/pooled is 16x{dim} where the store maps 16x32" in str(info.value)
    assert "zeros" not in str(info.value)  # the map reads a slice of its numbers, or fails


def test_a_sound_parted_store_still_reads_its_rows(tmp_path):
    """The shape check passes the parts extraction writes, complete or not."""
    store, _ = _complete(tmp_path)
    X, _ = FeatureStore(store).arrays("pooled")
    assert X.shape == (32, 32) and np.isfinite(X).all()
    partial, _ = _parted(tmp_path / "partial")
    X, _ = FeatureStore(partial).arrays("pooled", allow_incomplete=True)
    assert X.shape == (16, 32)


def test_cache_list_names_the_damaged_part_of_a_parted_store(tmp_path, capsys):
    """A complete parted store with one part cut short was listed as a bare 'unreadable',
    which prune --incomplete deletes whole: the listing names the part whose deletion alone
    (then a rerun) mends the store and keeps the other parts' rows."""
    store, parts = _complete(tmp_path)
    data = parts[0].read_bytes()
    parts[0].write_bytes(data[: len(data) // 2])
    assert main(["cache", "list", str(tmp_path)]) == 0
    (line,) = [s for s in capsys.readouterr().out.splitlines() if s.endswith(store.name)]
    assert line.startswith(f"unreadable ({parts[0].name} damaged)")


def test_an_incomplete_parted_store_refuses_another_stores_part_copied_in(tmp_path):
    """Only a complete store's parts were checked to be its own: part 0 of another store (48 px
    images) copied into an incomplete one read as its rows with allow_incomplete."""
    store, parts = _parted(tmp_path / "a")
    shutil.copy(_another_stores_part(tmp_path / "b", tasks=2), parts[0])
    with pytest.raises(StoreMismatchError, match="is not part 0 of store") as info:
        FeatureStore(store).arrays("pooled", allow_incomplete=True)
    assert "Delete it and rerun the same extraction" in str(info.value)


def test_cache_list_names_another_stores_part_not_a_newer_format(tmp_path, capsys):
    """A parted store holding another store's part was listed as 'newer format'."""
    store, parts = _complete(tmp_path / "a")
    shutil.copy(_another_stores_part(tmp_path / "b", tasks=1), parts[0])
    assert main(["cache", "list", str(tmp_path / "a")]) == 0
    (line,) = [s for s in capsys.readouterr().out.splitlines() if s.endswith(store.name)]
    assert line.startswith(f"unreadable ({parts[0].name} of another store)")
