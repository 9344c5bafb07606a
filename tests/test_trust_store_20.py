"""Trust sweep of store renames where the OS differs: without flock (Windows, where an open
file can be neither renamed nor deleted) a writer closes its temporary store file before it
renames or deletes it, and a folder that cannot be synced after the rename is named as such,
with the store said to be in place (not "Nothing was written")."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
from test_trust_store_17 import _complete
from test_trust_store_19 import _create

import featpipe.store.lock as lock
from featpipe.errors import StoreWriteError
from featpipe.store.consolidate import consolidate


def _open_here(path: Path) -> bool:
    """Whether this process holds a descriptor of the file ``path``."""
    target = str(path.resolve())
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == target:
                return True
        except OSError:
            pass
    return False


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads /proc/self/fd")
def test_without_flock_the_temporary_file_is_closed_before_its_rename_and_delete(
    monkeypatch, tmp_path
):
    """Without flock the claim only checked the file, but still held it open while renaming
    it into place (and while deleting a killed run's leftover), which Windows refuses
    (WinError 32): StoreWriter.create, consolidate and create_parted could not work there."""
    path = tmp_path / "x.h5"
    tmp = path.with_name("x.h5.tmp")
    tmp.write_bytes(b"a killed run's leftover")
    seen = []
    real_replace, real_unlink = os.replace, os.unlink

    def replace(src, dst, *args, **kwargs):
        seen.append(("replace", _open_here(Path(src))))
        return real_replace(src, dst, *args, **kwargs)

    def unlink(name, *args, **kwargs):
        if Path(name) == tmp:
            seen.append(("unlink", _open_here(tmp)))
        return real_unlink(name, *args, **kwargs)

    monkeypatch.setattr(lock, "fcntl", None)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "unlink", unlink)
    _create(path)
    monkeypatch.undo()
    assert seen == [("unlink", False), ("replace", False)]
    assert path.exists() and not tmp.exists()


def _folder_fsync_fails(monkeypatch):
    real_fsync = os.fsync

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize("writer", ["create", "consolidate"])
def test_a_folder_that_fails_to_sync_after_the_rename_says_the_store_is_in_place(
    monkeypatch, tmp_path, writer
):
    """An fsync of the folder failing after the store was renamed into place made
    StoreWriter.create say 'Nothing was written' (the store was there), and consolidate
    raise the bare OSError."""
    if writer == "create":
        path = tmp_path / "x.h5"
        _folder_fsync_fails(monkeypatch)
        run = lambda: _create(path)  # noqa: E731
    else:
        store, _ = _complete(tmp_path / "cache")
        path = tmp_path / "one.h5"
        _folder_fsync_fails(monkeypatch)
        run = lambda: consolidate(store, path)  # noqa: E731
    with pytest.raises(StoreWriteError) as info:
        run()
    monkeypatch.undo()
    assert str(info.value) == (
        f"Cannot sync the folder {tmp_path}: input/output error. {path} is written whole and "
        "in place, but until that folder reaches the disk a power cut may lose it; check the "
        "disk, then write it again if it is gone after a restart."
    )
    assert info.value.errno == errno.EIO
    assert path.exists() and not path.with_name(path.name + ".tmp").exists()
