"""Trust sweep of the feature store: damaged files, what `featpipe cache prune` may delete,
and a consolidate that other commands run beside."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from featpipe.cli import main
from featpipe.errors import UnreadableStoreError
from featpipe.store import FeatureStore, write_arrays

TESTS = Path(__file__).resolve().parent
FAST = dict(workers=0, device="cpu", progress=False, batch_size=4, dtype="float32")


def _small_store(path: Path) -> FeatureStore:
    x = np.random.RandomState(0).randn(6, 3).astype(np.float32)
    return write_arrays(path, {"pooled": x}, [0, 1] * 3, ["train", "val", "test"] * 2, ["a", "b"])


def _damaged_copies(store: Path, folder: Path) -> list[Path]:
    """Copies of ``store`` with one HDF5 metadata signature (B-tree, heap, symbol table
    node, global heap) overwritten each: damage HDF5 detects rather than reads."""
    data = store.read_bytes()
    copies = []
    for found in re.finditer(b"GCOL|HEAP|TREE|SNOD", data):
        blob = bytearray(data)
        blob[found.start() : found.start() + 4] = b"XXXX"
        copies.append(folder / f"damaged-{found.start()}.h5")
        copies[-1].write_bytes(bytes(blob))
    return copies


def test_a_damaged_store_is_one_error_naming_the_file_and_the_fix(tmp_path, capsys):
    """Damage found while reading (a global heap, a B-tree of a dataset) raised h5py's
    OSError or KeyError (a traceback in featpipe info/export) instead of the store's error."""
    copies = _damaged_copies(_small_store(tmp_path / "s.h5").path, tmp_path)
    assert len(copies) > 5
    for path in copies:
        with pytest.raises(UnreadableStoreError, match=re.escape(str(path)) + ".*--overwrite"):
            store = FeatureStore(path)
            store.ids()
            store.arrays("pooled")
            store.info()
        out = tmp_path / "out.npz"
        assert main(["export", str(path), "--out", str(out)]) == 2, path
        assert capsys.readouterr().err.startswith(f"featpipe export: error: {path} is not")
