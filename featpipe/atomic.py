"""Files written whole: a temporary file of this writer beside the target, renamed into place,
so that a kill leaves the old file or the new one, never half of one."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from featpipe.errors import FileWriteError


def replace_with(
    path: str | Path, write: Callable[[Path], object], *, durable: bool = True
) -> None:
    """``write`` a temporary file beside ``path``, then rename it to ``path``, durably: its
    bytes reach the disk before its new name, and its folder after (a power cut then leaves
    the old file or the new one, never an empty one). The temporary name is unique to this
    call (two processes writing one path, as a report and a run finishing the same folder or
    GridSearchCV's jobs sharing a cache, never touch each other's) and keeps ``path``'s
    suffix (``np.save`` adds ``.npy`` to a name without it).

    ``durable=False`` skips both syncs (each costs milliseconds): a kill still leaves the old
    file or the new one, but a power cut may leave an empty or partly written file. Only for
    files whose reader checks them and can make them again, as a cache's entries."""
    path = Path(path)
    fd, name = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}"
    )
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide the file from the group
        if durable:
            sync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        sync_placed(path)  # outside the try: the file is in place, there is nothing to delete


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole (see :func:`replace_with`)."""
    replace_with(path, lambda tmp: tmp.write_bytes(data))


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` whole (see :func:`replace_with`)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def sync_folder(folder: str | Path) -> None:
    """Have the OS write ``folder``'s entries to disk: a rename there is kept through a power
    cut only then (else the old name, or the temporary one, may come back)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows opens no folder (and keeps its renames itself)
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF):  # file systems that sync no folder
            raise
    finally:
        os.close(fd)


def sync_placed(path: Path, error_type: type[FileWriteError] = FileWriteError) -> None:
    """Sync the folder of a file just renamed to ``path``; on failure raise ``error_type``
    (a store's writers give StoreWriteError) saying that the file is in place (not that
    nothing was written) and what is still at risk. Called after the write's block that
    deletes its temporary file on failure: there is none left."""
    try:
        sync_folder(path.parent)
    except OSError as exc:
        reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
        error = error_type(
            f"Cannot sync the folder {path.parent}: {reason}. {path} is written "
            "whole and in place, but until that folder reaches the disk a power cut may lose "
            "it; check the disk, then write it again if it is gone after a restart."
        )
        error.errno = exc.errno
        raise error from exc


def sync_file(path: Path) -> None:
    """Have the OS write ``path``'s bytes to disk: renamed before that, the new name may
    come back from a power cut naming an empty file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once: setting it is process-wide, so not done while writing
