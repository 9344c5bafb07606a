"""One folder sync after a file is renamed into place (featpipe.atomic.sync_placed): when it
fails, every writer, a store's or another file's, says so in one wording, names the file as
in place, and leaves it there; a store's error is a StoreWriteError, which is a FileWriteError,
so one ``except FileWriteError`` catches the failure of any file featpipe writes whole."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest
from test_trust_store_17 import _complete
from test_trust_store_19 import _create
from test_trust_store_20 import _folder_fsync_fails
from test_trust_store_22 import small_store

from featpipe.atomic import write_text_atomic
from featpipe.cli import main
from featpipe.errors import FileWriteError, StoreWriteError
from featpipe.store import FeatureStore
from featpipe.store.consolidate import consolidate


def _said(path: Path) -> str:
    """The message every writer gives for a folder sync of ``path`` failing with EIO."""
    return (
        f"Cannot sync the folder {path.parent}: input/output error. {path} is written whole "
        "and in place, but until that folder reaches the disk a power cut may lose it; check "
        "the disk, then write it again if it is gone after a restart."
    )


@pytest.mark.parametrize("command", ["export", "consolidate"])
def test_a_failed_folder_sync_reads_the_same_from_every_command(
    tmp_path, monkeypatch, capsys, command
):
    """Before: `featpipe export` said '... is written whole and in place, ... write it again
    ...' and `featpipe consolidate` '... is in place, ... (the store itself is whole)', from
    two sync_placed functions."""
    if command == "export":
        store = small_store(tmp_path / "s.h5").path
        out = tmp_path / "features.npz"
    else:
        store, _ = _complete(tmp_path / "cache")
        out = tmp_path / "one.h5"
    _folder_fsync_fails(monkeypatch)
    assert main([command, str(store), "--out", str(out)]) == 2
    monkeypatch.undo()
    assert capsys.readouterr().err == f"featpipe {command}: error: {_said(out)}\n"
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(out.name)) == [
        out.name
    ]  # in place, no temporary file beside it
    if command == "export":
        assert np.load(out)["features"].shape == (12, 4)
    else:
        assert FeatureStore(out).complete


@pytest.mark.parametrize("writer", ["text", "create", "consolidate"])
def test_one_except_file_write_error_catches_every_writers_failed_sync(
    tmp_path, monkeypatch, writer
):
    """A store writer's failure stays a StoreWriteError (what its callers catch) and is also
    the FileWriteError that a report's or an export's is; its errno is the OS's."""
    if writer == "text":
        path = tmp_path / "report.md"
        run = lambda: write_text_atomic(path, "# report\n")  # noqa: E731
    elif writer == "create":
        path = tmp_path / "x.h5"
        run = lambda: _create(path)  # noqa: E731
    else:
        store, _ = _complete(tmp_path / "cache")
        path = tmp_path / "one.h5"
        run = lambda: consolidate(store, path)  # noqa: E731
    _folder_fsync_fails(monkeypatch)
    with pytest.raises(FileWriteError) as info:
        run()
    monkeypatch.undo()
    caught = info.value
    assert str(caught) == _said(path) and caught.errno == errno.EIO
    assert isinstance(caught, StoreWriteError) == (writer != "text")
    assert path.exists() and not path.with_name(path.name + ".tmp").exists()
