"""Store files on disk: opening them with clear errors, free space, and failed writes.

Every failure here ends in one sentence that names the file, says what is wrong and how to go
on: a damaged or foreign file (with ``--overwrite`` advised only when no other process holds
the store's lock), a store in use, a disk too small for the store, a write that failed.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import time
from pathlib import Path

import h5py

from featpipe.errors import (
    FeaturePipeError,
    StoreInUseError,
    StoreWriteError,
    UnreadableStoreError,
)
from featpipe.store.lock import holder, in_use_message

# Room kept free for the HDF5 metadata written when a run starts and when it finishes: a failed
# metadata flush can leave an HDF5 file unreadable, so those writes never start without it.
METADATA_RESERVE = 256 * 1024
# A writer waits this long for readers that have the file open (HDF5 locks it while they read).
OPEN_RETRY_SECONDS = 10.0


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def os_error_number(exc: BaseException) -> int | None:
    """The errno of an OS-level failure, also when h5py only has it in its message."""
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    found = re.search(r"errno = (\d+)", str(exc))
    return int(found.group(1)) if found else None


def disk_refused(exc: BaseException) -> bool:
    """Whether a write failed because the disk refused it: full, over quota, a file too large
    or a read-only file system (not a damaged file or a bug)."""
    return os_error_number(exc) in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


def lock_conflict(exc: BaseException) -> bool:
    """Whether HDF5 failed because another process has the file open for writing (its file
    lock), rather than because the file is damaged."""
    number = os_error_number(exc)
    return number in (errno.EAGAIN, errno.EWOULDBLOCK) or "unable to lock" in str(exc)


def describe_failure(exc: BaseException) -> str:
    """``"no space left on device"`` for ENOSPC; the first line of the message otherwise."""
    number = os_error_number(exc)
    if number is not None:
        return os.strerror(number).lower()
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


NOT_HDF5 = "it is not an HDF5 file"
# Most often the user's own file given where a store goes (an image, a CSV manifest): advise
# the right path, not deleting it; a store cut off at its start reads so too.
NOT_HDF5_FIX = (
    "Give the path of a featpipe store's .h5 file (if it was a store, its start is damaged: "
    "extract it again with --overwrite)"
)


def unreadable_reason(exc: OSError) -> str:
    """Why HDF5 could not open a file (``exc``, its OSError), in words."""
    text = str(exc)
    if "truncated file" in text:
        return "the file is truncated (cut short by a full disk or an interrupted copy?)"
    if "file signature not found" in text:
        return NOT_HDF5
    return f"HDF5 cannot open it ({text.splitlines()[0]})"


REPLACE_FIX = (
    "Delete it, or run the extraction again with --overwrite (overwrite=True) to replace it"
)


def unreadable(path: Path, reason: str, fix: str = REPLACE_FIX) -> FeaturePipeError:
    """The error for a file at a store's path that is not a usable store. Replacing it is
    advised only when no other process holds the store's lock (otherwise it is being made)."""
    owner = holder(path)
    if owner is not None:
        return StoreInUseError(in_use_message(path, owner))
    return UnreadableStoreError(f"{path} is not a readable featpipe store: {reason}. {fix}.")


def open_h5(path: Path, mode: str = "r", **kwargs) -> h5py.File:
    """``h5py.File(path, mode)``, with a FeaturePipeError for a file that HDF5 cannot open or
    that another process has open. A writer waits a little for readers to close it."""
    deadline = time.monotonic() + (OPEN_RETRY_SECONDS if mode != "r" else 0.0)
    while True:
        try:
            return h5py.File(path, mode, **kwargs)
        except FileNotFoundError:
            raise
        except OSError as exc:
            if not lock_conflict(exc):
                reason = unreadable_reason(exc)
                fix = NOT_HDF5_FIX if reason == NOT_HDF5 else REPLACE_FIX
                raise unreadable(path, reason, fix) from exc
            if time.monotonic() < deadline:
                time.sleep(0.1)
                continue
            owner = holder(path)
            raise StoreInUseError(
                in_use_message(path, owner)
                if owner is not None
                else f"{path} is open in another process (HDF5 locks it while it is open for "
                "writing, or for reading while this one writes). Try again once it is closed."
            ) from exc


def sync_h5(f: h5py.File) -> None:
    """Flush and fsync an open file: HDF5's flush only hands the bytes to the OS, which may
    write later bytes (a done flag, "complete") to disk before earlier ones (rows, reasons)."""
    f.flush()
    os.fsync(f.id.get_vfd_handle())


def free_bytes(folder: Path) -> int:
    """Free bytes on the file system of ``folder`` (or of its closest existing parent)."""
    return shutil.disk_usage(_existing(folder)).free


def _existing(folder: Path) -> Path:
    """``folder``, or its closest existing parent."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def holds_no_files(folder: Path) -> str | None:
    """Why no file can be written on the file system of ``folder`` whatever its free space
    (read-only; no blocks at all, as /proc and /sys), or None: then "0 B free" is the wrong
    cause to name."""
    try:
        st = os.statvfs(_existing(folder))
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        return None
    if st.f_flag & os.ST_RDONLY:
        return "its file system is read-only"
    if st.f_blocks == 0:
        return "its file system holds no files (as /proc and /sys)"
    return None


def unwritten_bytes(path: Path) -> int:
    """Bytes of ``path`` not yet on disk: a store is allocated at full size up front, as a
    sparse file where the file system allows it, so its holes are what writing will take."""
    st = Path(path).stat()
    return max(0, st.st_size - st.st_blocks * 512)


def check_free_space(path: Path, needed: int, what: str) -> None:
    """Raise StoreWriteError unless ``needed`` bytes (plus the metadata reserve) are free where
    ``path`` lives."""
    free = free_bytes(Path(path).parent)
    needed += METADATA_RESERVE
    if free < needed:
        if why := holds_no_files(Path(path).parent):  # no freeing of space would help
            raise StoreWriteError(
                f"Cannot write {path} in {Path(path).parent}: {why}. Write the store elsewhere "
                "(--cache-dir or --out), in a folder on a disk."
            )
        error = StoreWriteError(
            f"Not enough free space for {path}: {what} needs {format_bytes(needed)} and "
            f"{format_bytes(free)} is free on its disk. Free some space, or write the store "
            "elsewhere (--cache-dir or --out)."
        )
        error.errno = errno.ENOSPC
        raise error
