"""One writer per store: an exclusive lock file beside it, and a note of who holds it.

``<store>.lock`` is locked with ``flock`` (the ``filelock`` package) for the whole
create/resume/write/finish of a store; the holder writes its pid, host and start time into
``<store>.lock.json``, so that a second process can say whom it waits for. The kernel drops
the lock when its holder dies, even by SIGKILL; a note left behind by such a holder is
overwritten by the next one. The lock file stays in place on release (waiters may hold it
open), and ``featpipe cache prune`` removes it with its store.

Readers (:class:`ReadLock`) hold a shared ``flock`` of ``<store>.read.lock`` while they may
read the store; ``featpipe cache prune`` deletes a store only while it holds that lock
exclusively, so it skips a store being read (a head trained from it) instead of deleting it
between two reads. Readers never wait: a reader never blocks another, and one that cannot
take the lock (a prune deleting the store now, a folder it cannot write) reads without it.
Writers ignore it, and plain h5py reads take none.

Two writers of one path (Python API calls, which take no store lock) build it under one
temporary name: each renames or deletes that name only while holding the file there flocked
(:func:`claimed`), as HDF5 holds it while open, and checked to be the file it made.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import weakref
from collections.abc import Callable
from pathlib import Path

try:
    import fcntl
except ImportError:  # no flock (Windows): readers go unseen, as before read locks
    fcntl = None

from filelock import FileLock, Timeout

from featpipe.errors import StoreInUseError, StoreWriteError
from featpipe.interrupt import say

LOCK_SUFFIX = ".lock"
OWNER_SUFFIX = ".lock.json"
READ_SUFFIX = ".read.lock"

_HELD: set[str] = set()  # stores this process holds: never "in use by another process"


def lock_path(store: str | Path) -> Path:
    store = Path(store)
    return store.with_name(store.name + LOCK_SUFFIX)


def owner_path(store: str | Path) -> Path:
    store = Path(store)
    return store.with_name(store.name + OWNER_SUFFIX)


def read_lock_path(store: str | Path) -> Path:
    store = Path(store)
    return store.with_name(store.name + READ_SUFFIX)


def lock_named(
    path: Path, flags: int, *, create: bool = False, required: bool = True
) -> int | None:
    """An open file of ``path`` (made if ``create``) flocked with ``flags`` without waiting,
    kept only once ``path`` is seen to still name it (another process may delete or replace
    it between our open and our lock); None when no file is there. BlockingIOError when
    another open file holds a lock that conflicts; OSError where the file system has no
    flock, unless not ``required`` (then, and without flock at all, the name check alone)."""
    for _ in range(10):  # deleted or replaced between our open and our lock: lock the new file
        try:
            fd = os.open(path, os.O_RDONLY | (os.O_CREAT if create else 0), 0o644)
        except FileNotFoundError:
            return None
        try:
            _flock(fd, flags, required)
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                return fd
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    return None


def _flock(fd: int, flags: int, required: bool) -> None:
    if fcntl is None:
        return
    try:
        fcntl.flock(fd, flags | fcntl.LOCK_NB)
    except BlockingIOError:
        raise
    except OSError:
        if required:
            raise


def claimed(
    path: Path, act: Callable[[], object], check: Callable[[int], object] | None = None
) -> bool:
    """Rename or delete the file named ``path`` (``act``) while holding it exclusively
    flocked, so that ``act`` moves the file that ``check`` (given its descriptor, raising to
    stop) saw; False when no file is there. Writers rename and delete their temporary store
    files only so, and HDF5 flocks a file while it is open: BlockingIOError while another
    process has it. Without flock (Windows) the file is closed before ``act``: there, an open
    file can be neither renamed nor deleted, and there is no lock to hold."""
    fd = lock_named(path, fcntl.LOCK_EX if fcntl else 0, required=False)
    if fd is None:
        return False
    try:
        if check is not None:
            check(fd)
        if fcntl is not None:
            act()
    finally:
        os.close(fd)
    if fcntl is None:
        act()
    return True


def _lock_read_file(store: Path, flags: int, create: bool = True) -> int | None:
    """An open file of ``<store>.read.lock`` (made unless ``create`` is False) flocked with
    ``flags`` (:func:`lock_named`); None when it cannot be opened or locked (a file system
    without flock: no read locks there). The file is deleted by its last reader and by
    prune."""
    try:
        return lock_named(read_lock_path(store), flags, create=create)
    except BlockingIOError:
        raise
    except OSError:
        return None


def _release_read_lock(fd: int, path: Path, pid: int) -> None:
    """Close a reader's lock file, deleting it first when no other reader holds it (so a
    store's folder keeps no file of its past readers). A forked child shares the lock of
    its parent's open file (``pid``'s): it only closes its copy."""
    if os.getpid() != pid:
        os.close(fd)
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # only when no other reader
        if os.path.samestat(os.fstat(fd), os.stat(path)):
            path.unlink()
    except OSError:
        pass
    finally:
        os.close(fd)


class ReadLock:
    """A reader's shared lock of ``store`` (see the module's notes), held until
    :meth:`release` or until the object is garbage-collected; never waits. It is taken
    beside every store whose folder it can write to, a store copied into a cache folder
    (without its ``.lock``) included: ``featpipe cache prune`` deletes those too. In a
    read-only folder it reads without one. A copy (pickled for another process) takes its
    own. ``store`` None: no lock."""

    def __init__(self, store: str | Path | None):
        self.store = store
        self.held = False
        if fcntl is None or store is None:
            return
        try:
            fd = _lock_read_file(Path(store), fcntl.LOCK_SH)
        except OSError:  # a prune is deleting the store now: its next read says so
            return
        if fd is not None:
            self.held = True
            path = read_lock_path(store)
            self._release = weakref.finalize(self, _release_read_lock, fd, path, os.getpid())

    def release(self) -> None:
        if self.held:
            self._release()
            self.held = False

    def __reduce__(self):
        return ReadLock, (self.store,)


def being_read(store: str | Path) -> bool:
    """Whether a reader holds a :class:`ReadLock` of ``store`` (this process's included)."""
    if fcntl is None:
        return False
    try:
        fd = _lock_read_file(Path(store), fcntl.LOCK_EX, create=False)
    except BlockingIOError:
        return True
    if fd is not None:
        os.close(fd)
    return False


class NoReaders:
    """The exclusive lock of ``<store>.read.lock``, as a context manager, held while the
    store is deleted: StoreInUseError at once while a reader holds it."""

    def __init__(self, store: str | Path):
        self.store = Path(store)
        self._fd: int | None = None

    def __enter__(self) -> NoReaders:
        if fcntl is None:
            return self
        try:  # None: a folder where no reader could make it either
            self._fd = _lock_read_file(self.store, fcntl.LOCK_EX)
        except BlockingIOError:
            raise StoreInUseError(f"{self.store} is being read by another process.") from None
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)


def read_owner(store: str | Path) -> dict:
    """The note of the lock's holder (``pid``, ``host``, ``since``); {} when there is none."""
    try:
        owner = json.loads(owner_path(store).read_text())
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def describe_owner(owner: dict) -> str:
    """``"pid 123 on host h (since 2026-01-01T10:00:00+00:00)"``, or "another process"."""
    if not owner.get("pid"):
        return "another process"
    text = f"pid {owner['pid']} on host {owner.get('host', '?')}"
    return f"{text} (since {owner['since']})" if owner.get("since") else text


def holder(store: str | Path) -> dict | None:
    """Who holds the lock of ``store`` now: the holder's note ({} if it wrote none yet), or
    None when no other process holds it. Takes and drops the lock at once to find out."""
    store = Path(store)
    lock = lock_path(store)
    if str(store.resolve()) in _HELD or not lock.exists():
        return None  # a holder creates the lock file before it locks it
    probe = FileLock(str(lock))
    try:
        probe.acquire(timeout=0)
    except Timeout:
        return read_owner(store)
    except OSError:  # e.g. a read-only folder: no one could have locked it from here
        return None
    probe.release()
    return None


def in_use_message(store: str | Path, owner: dict) -> str:
    return (
        f"{store} is in use by {describe_owner(owner)}: another extraction is writing it. "
        "Wait for it to finish; it leaves a complete store that the same command then reuses."
    )


def _stderr(message: str) -> None:
    say(f"featpipe: {message}")  # every rank may wait: one line each in their shared log


class StoreLock:
    """Exclusive lock of one store, as a context manager. A store held by another process is
    waited for (saying for whom, through ``notify``) up to ``timeout`` seconds (None: as long
    as it takes; 0: not at all), then StoreInUseError. ``what`` names what is locked, and
    ``option`` the setting that moves it, in the error for a lock that cannot be made."""

    def __init__(
        self,
        store: str | Path,
        timeout: float | None = None,
        notify: Callable[[str], None] = _stderr,
        what: str | None = None,
        option: str = "--cache-dir or --out",
    ):
        self.store = Path(store)
        self.what = f"the store {self.store}" if what is None else what
        self.option = option
        self.timeout = timeout
        self.notify = notify
        self._lock = FileLock(str(lock_path(self.store)))

    def __enter__(self) -> StoreLock:
        try:
            self.store.parent.mkdir(parents=True, exist_ok=True)
            self._lock.acquire(timeout=0)
        except Timeout:
            self._check_lockable()
            self._wait()
        except OSError as exc:  # e.g. a read-only folder
            raise self._cannot_lock(exc) from exc
        self._write_owner()
        _HELD.add(str(self.store.resolve()))
        return self

    def _cannot_lock(self, exc: OSError) -> StoreWriteError:
        return StoreWriteError(
            f"Cannot lock {self.what} for writing ({exc.strerror or exc}"
            f"{f': {exc.filename}' if exc.filename else ''}): put it in a folder you can "
            f"write to ({self.option})."
        )

    def _check_lockable(self) -> None:
        """filelock takes a lock file it cannot open (/proc, a read-only folder) for one that
        another process holds, and would wait for it forever: refuse it instead."""
        try:
            os.close(os.open(lock_path(self.store), os.O_RDWR | os.O_CREAT, 0o644))
        except OSError as exc:
            raise self._cannot_lock(exc) from None

    def _wait(self) -> None:
        owner = read_owner(self.store)
        if self.timeout is not None and self.timeout <= 0:
            raise StoreInUseError(in_use_message(self.store, owner)) from None
        limit = "" if self.timeout is None else f" (at most {self.timeout:g} s)"
        self.notify(f"waiting for {self.store}{limit}: in use by {describe_owner(owner)}")
        try:
            self._lock.acquire(timeout=-1 if self.timeout is None else self.timeout)
        except Timeout:
            owner = read_owner(self.store) or owner
            raise StoreInUseError(
                in_use_message(self.store, owner)
                + f" Waited {self.timeout:g} s (lock_timeout, --lock-timeout)."
            ) from None

    def _write_owner(self) -> None:
        note = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        path = owner_path(self.store)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(note))
            os.replace(tmp, path)  # readers see the old note or the new one, never half
        except OSError:
            tmp.unlink(missing_ok=True)  # the note only helps to explain a wait

    def __exit__(self, *exc) -> None:
        _HELD.discard(str(self.store.resolve()))
        if read_owner(self.store).get("pid") == os.getpid():
            owner_path(self.store).unlink(missing_ok=True)
        self._lock.release()
