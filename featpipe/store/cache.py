"""What a cache folder holds, and removing from it safely (``featpipe cache``).

Every change of an image set, backbone or layer list makes a new store under a new key, so
old stores, finished or not, pile up. :func:`scan` describes each store and each leftover
(a ``.tmp`` file of a creation that was killed, a lock file whose store is gone, a parts folder
that no store maps);
:func:`remove` deletes one of them while holding its store's lock, so that a store some
process is writing is never touched.

A parted store is in use while its top-level lock or the lock of any of its part files is held
(``--shard`` tasks and torchrun ranks write parts under the part's lock alone).
"""

from __future__ import annotations

import contextlib
import glob
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py

from featpipe.errors import (
    ConfigError,
    FeaturePipeError,
    MissingPartError,
    StoreInUseError,
    StoreMismatchError,
    UnreadableStoreError,
)
from featpipe.store import schema
from featpipe.store.files import describe_failure, lock_conflict, open_h5
from featpipe.store.lock import (
    LOCK_SUFFIX,
    OWNER_SUFFIX,
    READ_SUFFIX,
    NoReaders,
    StoreLock,
    being_read,
    describe_owner,
    holder,
    lock_path,
    owner_path,
    read_lock_path,
)
from featpipe.store.parts import is_parted, parted_at, parts_dir, renamed_from
from featpipe.store.reader import FeatureStore

STORE_SUFFIX = ".h5"
TMP_SUFFIX = ".tmp"
DAY = 86400.0
NOT_A_STORE = "not a featpipe store"  # the state of another program's HDF5 file
PARTS_SUFFIX = ".parts"
BEING_READ = "in use (being read by another process)"
ORPHANED = "leftover (parts of no store)"  # the state of a parts folder no store maps
# What a parts folder holds: part files, their creation's .tmp, their locks and lock notes.
_PART_FILE = re.compile(r"part-\d{5}\.h5(\.tmp|\.lock(\.json(\.\d+\.tmp)?)?)?")


@dataclass
class CacheEntry:
    """One store, or one leftover file, of a cache folder."""

    path: Path
    store: Path  # the store it belongs to (itself, for a store)
    state: str  # complete, incomplete N/M, in use ..., unreadable, newer format, leftover
    size: int  # bytes on disk
    modified: float  # mtime, seconds since the epoch
    source: str = "-"
    backbone: str = "-"
    layers: list[str] = field(default_factory=list)
    rows: int | None = None
    bad_part: str | None = None  # the one part file that makes a parted store unreadable

    @property
    def is_store(self) -> bool:
        return self.path == self.store

    @property
    def in_use(self) -> bool:
        return self.state.startswith("in use")

    def age_days(self, now: float | None = None) -> float:
        return ((time.time() if now is None else now) - self.modified) / DAY


def _disk_size(path: Path) -> int:
    st = path.stat()
    size = st.st_blocks * 512 if hasattr(st, "st_blocks") else st.st_size
    if path.name.endswith(STORE_SUFFIX):  # a parted store's parts
        size += sum(_disk_size(part) for part in _part_files(path))
    return size


def _owns_parts(store: Path) -> bool:
    """Whether the parts folder beside ``store`` is its own: it is a parted store, or it cannot
    be read now and no other parted store shares the folder. A one-file store named as a
    parted one but for its last suffix (feats.h5 beside feats.hdf5) has no parts there."""
    folder = parts_dir(store)
    if not folder.is_dir():
        return False
    try:
        with h5py.File(store, "r") as f:
            return is_parted(f.attrs)
    except OSError:  # damaged, or open for writing by another process
        pass
    others = store.parent.glob(glob.escape(store.stem) + "*")
    return not any(p != store and parts_dir(p) == folder and parted_at(p) for p in others)


def _part_files(store: Path) -> list[Path]:
    """The part files in the parts folder of ``store`` (none for a one-file store)."""
    return sorted(parts_dir(store).glob("part-*.h5")) if _owns_parts(store) else []


def _part_locks(store: Path) -> list[Path]:
    """Every part of ``store`` a writer may hold: its part files, and parts with a lock file."""
    return _parts_in(parts_dir(store)) if _owns_parts(store) else []


def _parts_in(folder: Path) -> list[Path]:
    """The parts of the parts folder ``folder``: part files, and parts with a lock file."""
    locked = {p.with_name(p.name[: -len(LOCK_SUFFIX)]) for p in folder.glob("part-*.h5.lock")}
    return sorted(locked | set(folder.glob("part-*.h5")))


def _holder(store: Path) -> dict | None:
    """Who holds the lock of ``store`` or of one of its parts; None when no other process does."""
    owner = holder(store)
    for part in _part_locks(store) if owner is None else []:
        owner = holder(part)
        if owner is not None:
            break
    return owner


def _modified(store: Path) -> float:
    """The last write to a store: the newest of its file's and its parts' mtimes."""
    times = [store.stat().st_mtime]
    for part in _part_files(store):
        with contextlib.suppress(OSError):  # deleted meanwhile
            times.append(part.stat().st_mtime)
    return max(times)


def _unreadable_state(exc: BaseException) -> str:
    """The state of a store whose data cannot be read now: in use when HDF5 reports another
    process has one of its files open (a writer without featpipe's lock), else unreadable."""
    if isinstance(exc, StoreInUseError) or lock_conflict(exc):
        return "in use (open in another process)"
    return f"unreadable ({describe_failure(exc)})"


def _describe_store(path: Path) -> CacheEntry:
    entry = _describe(path)
    if not entry.in_use and being_read(path):  # a head is trained from it, say
        entry.state = BEING_READ
    return entry


def _describe(path: Path) -> CacheEntry:
    entry = CacheEntry(path, path, "unreadable", _disk_size(path), _modified(path))
    owner = _holder(path)
    if owner is not None:
        entry.state = f"in use by {describe_owner(owner)}"
    try:
        store = FeatureStore(path, read_lock=False)  # not a reader to count
    except StoreInUseError:  # open for writing, by this lock's holder or another program
        entry.state = entry.state if owner is not None else "in use"
        return entry
    except (UnreadableStoreError, OSError) as exc:
        if _foreign(path):
            entry.state = NOT_A_STORE
        else:
            _bad_part(entry, exc)
        return entry
    except MissingPartError:
        entry.state = _missing_state(path)
        return entry
    except StoreMismatchError as exc:  # a newer format: not for this featpipe to judge
        entry.state = "newer format"
        _bad_part(entry, exc)
        return entry
    source, backbone = _object(store, "source"), _object(store, "backbone")
    entry.source = DAMAGED if source is None else source_label(source)
    entry.backbone = DAMAGED if backbone is None else str(backbone.get("spec", "-"))
    entry.layers = list(store.layers)
    entry.rows = len(store)
    if owner is None:
        try:  # a parted store's flags are read through its part files
            done = store.chunk_done()
            complete = store.complete
        except (OSError, FeaturePipeError) as exc:
            entry.state = _unreadable_state(exc)
            return entry
        entry.state = "complete" if complete else f"incomplete {int(done.sum())}/{len(done)}"
    return entry


def _bad_part(entry: CacheEntry, exc: BaseException) -> None:
    """Name the part in ``entry`` of a parted store refused for that one part (damaged, or
    another store's part): deleting that file alone and rerunning the extraction keeps the
    other parts. Nothing when ``exc`` names no part."""
    part = getattr(exc, "part", None)
    if part is None:
        return
    why = "damaged" if isinstance(exc, UnreadableStoreError) else "of another store"
    entry.state = f"unreadable ({part.path.name} {why})"
    entry.bad_part = part.path.name


def _missing_state(path: Path) -> str:
    """The state of a parted store that misses parts: renamed away from the folder its map
    reads (kept by prune --incomplete: renaming it back restores it), or missing them."""
    try:
        with open_h5(path) as f:
            was = renamed_from(path, f)
    except (OSError, FeaturePipeError):
        was = None
    if was is not None:
        return f"renamed (reads {was})"
    return "incomplete (part files missing)"


DAMAGED = "(damaged)"  # an attribute that is not the JSON object featpipe writes


def _object(store: FeatureStore, name: str) -> dict | None:
    """A store's JSON attribute ``name``; None when the file holds something else there (its
    features still read: listed and kept as they are, not as an unreadable store)."""
    try:
        return store.attr_object(name)
    except UnreadableStoreError:
        return None


def source_label(source: dict) -> str:
    """What tells a store's source apart in a listing: its name, else the name of the shard
    pattern, folder or CSV file it was read from (every folder store has the same kind),
    else its kind."""
    if source.get("name"):
        return str(source["name"])
    for what in ("spec", "root", "csv"):
        if source.get(what):
            return Path(str(source[what])).name or str(source[what])
    return str(source.get("kind") or "-")


def _foreign(path: Path) -> bool:
    """Whether ``path`` is an HDF5 file another program made (no featpipe store has ever been
    without its ``format`` attribute at its path): listed, never deleted."""
    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("format") != schema.FORMAT
    except Exception:  # damaged, or not HDF5: what a store cut short looks like
        return False


def _open_elsewhere(path: Path) -> bool:
    """Whether another process has the HDF5 file ``path`` open for writing (HDF5 locks it)."""
    if not path.name.endswith(STORE_SUFFIX + TMP_SUFFIX):
        return False
    try:
        with h5py.File(path, "r"):
            return False
    except OSError as exc:
        return lock_conflict(exc)


def _leftover_store(path: Path) -> Path | None:
    """The store a leftover file belongs to, or None when ``path`` is not one."""
    name = path.name
    if name.endswith(STORE_SUFFIX + TMP_SUFFIX):  # a creation that did not finish
        return path.with_name(name[: -len(TMP_SUFFIX)])
    if OWNER_SUFFIX + "." in name and name.endswith(TMP_SUFFIX):  # a note being written
        return path.with_name(name.split(OWNER_SUFFIX + ".", 1)[0])
    for suffix in (OWNER_SUFFIX, READ_SUFFIX, LOCK_SUFFIX):
        if name.endswith(STORE_SUFFIX + suffix):
            store = path.with_name(name[: -len(suffix)])
            return None if store.exists() else store  # kept while their store exists
    return None


def _claimants(folder: Path) -> list[Path]:
    """The stores beside the parts folder ``folder`` whose parts it would hold: files there,
    and stores with a lock file (a store being laid out takes its lock before its file)."""
    found = folder.parent.glob(glob.escape(folder.stem) + "*")
    stores = {folder.with_name(p.name.removesuffix(LOCK_SUFFIX)) for p in found}
    return sorted(p for p in stores if p != folder and parts_dir(p) == folder)


def _renamed_reader(folder: Path) -> Path | None:
    """The parted store beside the parts folder ``folder``, renamed (listed so), that reads
    its parts from it: renaming it back restores it, so they are no leftover. None if none."""
    for path in folder.parent.glob("*" + STORE_SUFFIX):
        if not parted_at(path):
            continue
        try:
            with open_h5(path) as f:
                if renamed_from(path, f) == folder.name:
                    return path
        except (OSError, FeaturePipeError):
            continue
    return None


def _parts_owner(folder: Path) -> Path | None:
    """The parted store that reads its parts from the folder ``folder``: its own store, or
    one renamed alone (which still reads them). None when no store beside it does."""
    owners = [p for p in _claimants(folder) if parted_at(p)]
    return owners[0] if owners else _renamed_reader(folder)


def _orphaned(folder: Path) -> CacheEntry | None:
    """The parts folder ``folder`` when no store maps it (its parted store was deleted or
    moved away, e.g. once consolidated, or its creation was killed before the top-level file
    was made): a leftover, or in use while a store that may lay it out or one of its parts
    is locked. None when it is not such a folder: a store's parts (listed with it), or a
    folder holding anything but part files (not featpipe's)."""
    try:
        files = list(folder.iterdir())
    except OSError:
        return None
    if not all(p.is_file() and _PART_FILE.fullmatch(p.name) for p in files):
        return None
    claimants = _claimants(folder)
    if any(p.exists() and _owns_parts(p) for p in claimants) or _renamed_reader(folder):
        return None
    owner = None
    for path in [*claimants, *_parts_in(folder)]:  # a store laid out, a part written
        owner = holder(path)
        if owner is not None:
            break
    state = ORPHANED if owner is None else f"in use by {describe_owner(owner)}"
    size = sum(_disk_size(p) for p in files)
    modified = max([folder.stat().st_mtime, *(p.stat().st_mtime for p in files)])
    return CacheEntry(folder, folder.with_suffix(STORE_SUFFIX), state, size, modified)


def scan(folder: str | Path) -> list[CacheEntry]:
    """Every store (``*.h5``) and leftover file directly in ``folder``, sorted by name. The
    parts folder of a parted store is refused: its part files are that store's rows."""
    folder = Path(folder)
    owner = _parts_owner(folder) if folder.suffix == PARTS_SUFFIX else None
    if owner is not None:  # its parts would be listed, and pruned, as stores of their own
        raise ConfigError(
            f"{folder} is the parts folder of the parted store {owner}: its files are "
            "that store's parts, not stores of their own. Give the folder that holds the "
            f"store instead ({folder.parent})."
        )
    entries = []
    for path in sorted(folder.iterdir()):
        if path.is_dir() and not path.is_symlink() and path.name.endswith(PARTS_SUFFIX):
            orphaned = _orphaned(path)
            entries += [orphaned] if orphaned is not None else []
            continue
        if not path.is_file() or path.is_symlink():
            continue
        if path.name.endswith(STORE_SUFFIX):
            entries.append(_describe_store(path))
            continue
        store = _leftover_store(path)
        if store is None:
            continue
        st = path.stat()
        owner = holder(store)
        state = "leftover" if owner is None else f"in use by {describe_owner(owner)}"
        if owner is None and _open_elsewhere(path):  # e.g. consolidate's, made without a lock
            state = "in use (open in another process)"
        entries.append(CacheEntry(path, store, state, _disk_size(path), st.st_mtime))
    return entries


def select(
    entries: list[CacheEntry],
    *,
    incomplete: bool = False,
    older_than_days: float | None = None,
    everything: bool = False,
    now: float | None = None,
) -> list[CacheEntry]:
    """What ``featpipe cache prune`` deletes: leftover files always; stores when asked for
    (``incomplete``: incomplete or unreadable ones; ``older_than_days``: not written for that
    long; both: both conditions; ``everything``: all). Never anything in use, nor another
    program's HDF5 file."""
    chosen = []
    for entry in entries:
        if entry.in_use or entry.state == NOT_A_STORE:
            continue
        if not entry.is_store:
            chosen.append(entry)
            continue
        asked = everything or incomplete or older_than_days is not None
        if incomplete and not entry.state.startswith(("incomplete", "unreadable")):
            asked = False
        if older_than_days is not None and entry.age_days(now) <= older_than_days:
            asked = False
        if asked:
            chosen.append(entry)
    return chosen


def remove(entry: CacheEntry) -> bool:
    """Delete ``entry`` (a store with its lock files and parts, a leftover file, or a parts
    folder of no store) while holding its store's lock, every part's lock and its readers'
    lock exclusively; False, deleting nothing, when another process holds one of them."""
    try:
        with StoreLock(entry.store, timeout=0), contextlib.ExitStack() as parts:
            if entry.path.is_dir():  # a parts folder of no store
                if not _remove_orphaned(entry.path, parts):
                    return False
            else:
                if entry.is_store:  # readers too: held while it is deleted
                    parts.enter_context(NoReaders(entry.store))
                owned = entry.is_store and _owns_parts(entry.store)
                for part in _part_locks(entry.store) if owned else []:  # writers lock a part
                    parts.enter_context(StoreLock(part, timeout=0, notify=_quiet))
                entry.path.unlink(missing_ok=True)
                if owned:
                    shutil.rmtree(parts_dir(entry.store), ignore_errors=True)
            if entry.is_store or not entry.store.exists():
                owner_path(entry.store).unlink(missing_ok=True)
                # deleted while held, so that no other process can take it in between
                read_lock_path(entry.store).unlink(missing_ok=True)
                lock_path(entry.store).unlink(missing_ok=True)
    except StoreInUseError:
        return False
    return True


def _remove_orphaned(folder: Path, locks: contextlib.ExitStack) -> bool:
    """Delete the parts folder of no store ``folder`` holding every part's lock (and, in
    :func:`remove`, the lock of the store it is named for), once it is seen to be one still:
    no other store took it meanwhile, no other process holds a lock of it."""
    for part in _parts_in(folder):
        locks.enter_context(StoreLock(part, timeout=0, notify=_quiet))
    entry = _orphaned(folder)
    if entry is None or entry.state != ORPHANED:
        return False
    shutil.rmtree(folder)
    return True


def _quiet(_message: str) -> None:
    return None
