"""A store writer deletes its temporary file on every failure inside its write, a
StoreWriteError included; only the folder sync after the rename (the store in place, no
temporary file left) is told without a delete (see test_trust_store_20)."""

from __future__ import annotations

import pytest
from test_trust_store_17 import _complete
from test_trust_store_20 import _create

import featpipe.store.consolidate as consolidate_module
import featpipe.store.writer as writer
from featpipe.errors import StoreWriteError


def _fails(*_args, **_kwargs):
    raise StoreWriteError("Cannot write: simulated.")


@pytest.mark.parametrize("where", ["create", "consolidate"])
def test_a_store_write_error_inside_the_write_removes_the_temporary_file(
    monkeypatch, tmp_path, where
):
    """Before: `except (StoreInUseError, StoreWriteError): raise` let any StoreWriteError
    raised while the temporary file was built (not only the folder sync's) leave it behind."""
    if where == "create":
        path = tmp_path / "x.h5"
        monkeypatch.setattr(writer, "_create_run_records", _fails)
        run = lambda: _create(path)  # noqa: E731
    else:
        store, _ = _complete(tmp_path / "cache")
        path = tmp_path / "one.h5"
        monkeypatch.setattr(consolidate_module, "_record_skipped", _fails)
        run = lambda: consolidate_module.consolidate(store, path)  # noqa: E731
    with pytest.raises(StoreWriteError, match="simulated"):
        run()
    assert not path.with_name(path.name + ".tmp").exists()
    assert not path.exists()
