"""Shared behaviour of sources whose images are files on disk."""

from __future__ import annotations

import hashlib
import os
import stat
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

from PIL import Image

from featpipe.data.images import load_rgb, read_error
from featpipe.data.source import ImageSource
from featpipe.distributed.progress import track
from featpipe.errors import SourceError
from featpipe.words import agrees, counted

_HASH_PROGRESS_MIN = 2000  # hashing fewer files than this is quick enough to do silently


class FileSource(ImageSource):
    """An ImageSource backed by one image file per row; subclasses fill ``files``."""

    files: list[Path]

    def load(self, index: int) -> Image.Image:
        return load_rgb(self.files[index])

    def read_bytes(self, index: int) -> bytes:
        try:
            return self.files[index].read_bytes()
        except OSError as err:
            raise read_error(self.files[index], err) from err

    def path(self, index: int) -> str:
        return str(self.files[index])

    def _fingerprint_parts(self, content: bool) -> Iterator[bytes]:
        files = track(
            self.files,
            desc="hashing images",
            unit="file",
            enabled=content and len(self.files) >= _HASH_PROGRESS_MIN,  # stat() is quick
        )
        for file in files:
            yield _file_digest(file) if content else file_stat(file)


def repeated_file(files: list[Path]) -> tuple[int, int, str, str] | None:
    """(first row, later row, real path of each) of the first image listed twice, else None:
    one image on two rows can land in train and in test, or in two classes. However its path is
    spelt (relative or absolute, with .., through a symlinked file or folder) one image has one
    real path; hard links give it two, so a file with more than one link is known by its inode,
    from the stat that telling symlinks costs anyway. Paths that differ only in case are one
    file where the file system does not tell case apart (macOS's, Windows'): those are
    compared by inode, one stat for each such pair."""
    real_dirs: dict[str, str] = {}  # realpath of each folder, once per folder
    seen: dict[object, tuple[int, str]] = {}
    folded: dict[str, tuple[int, str]] = {}  # {real path casefolded: its first row, real path}
    for row, file in enumerate(files):
        folder, name = os.path.split(str(file))
        if folder not in real_dirs:
            real_dirs[folder] = os.path.realpath(folder)
        real = os.path.join(real_dirs[folder], name)
        key: object = real
        try:
            st = os.lstat(real)
            if stat.S_ISLNK(st.st_mode):
                real = key = os.path.realpath(real)
                st = os.stat(real)
        except OSError:  # missing: refused or reported where the file is read
            pass
        else:
            # st_ino is 0 where a file system has no inode numbers (some Windows ones)
            if st.st_nlink > 1 and st.st_ino:
                key = (st.st_dev, st.st_ino)
        first, first_real = seen.setdefault(key, (row, real))
        if first != row:
            return first, row, first_real, real
        first, first_real = folded.setdefault(real.casefold(), (row, real))
        if first != row and _same_file(first_real, real):
            return first, row, first_real, real
    return None


def is_case_only(real: str, other: str) -> bool:
    """Whether two real paths that :func:`repeated_file` found to be one file differ only in
    case: one file (not two hard links), opened by either spelling, on a file system that does
    not tell case apart."""
    if real == other or real.casefold() != other.casefold():
        return False
    try:
        return os.stat(real).st_nlink == 1
    except OSError:
        return False


def _same_file(a: str, b: str) -> bool:
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:  # missing: refused or reported where the file is read
        return False
    return bool(sa.st_ino) and (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def files_under(folder: Path, suffix: str) -> list[Path]:
    """The files named ``*<suffix>`` (not hidden) anywhere under ``folder``, sorted, as
    ``Path.rglob`` finds them (symlinked folders not followed), but refusing a folder that
    cannot be listed, which rglob skips without a word. Hidden folders are skipped, as image
    folders' are (a ``.Trash-1000`` may hold deleted copies), with a warning when they hold
    such files."""
    found, hidden = [], []
    for dirpath, dirnames, filenames in os.walk(folder, onerror=unlisted):
        hidden += [Path(dirpath, d) for d in dirnames if is_hidden(d)]
        dirnames[:] = [d for d in dirnames if not is_hidden(d)]
        found += [Path(dirpath, n) for n in filenames if n.endswith(suffix) and n[0] != "."]
    _warn_hidden(folder, suffix, hidden)
    return sorted(found)


def is_hidden(name: str) -> bool:
    """Whether a file or folder is left out of a dataset: hidden (.DS_Store, macOS's ._x.jpg
    resource forks), or the __MACOSX folder of those forks that macOS zips hold."""
    return name.startswith(".") or name == "__MACOSX"


def _warn_hidden(folder: Path, suffix: str, hidden: list[Path]) -> None:
    """Warn of the ``*<suffix>`` files in the ``hidden`` folders under ``folder``, which are
    left out (folders that cannot be listed there are not looked into: nothing is read)."""
    where: dict[str, int] = {}
    for top in hidden:
        for dirpath, _, filenames in os.walk(top):
            n = sum(1 for name in filenames if name.endswith(suffix) and name[0] != ".")
            if n:
                where[Path(dirpath).relative_to(folder).as_posix()] = n
    if where:
        names = sorted(where)
        warnings.warn(
            f"{str(folder)!r} leaves out {counted(sum(where.values()), f'{suffix} file')} in "
            f"{agrees(len(names), 'a hidden folder', 'hidden folders')} "
            f"({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}): featpipe "
            "skips hidden folders, as in image folders. Move the files out if they belong to "
            "the dataset.",
            UserWarning,
            stacklevel=3,
        )


def unlisted(err: OSError) -> NoReturn:
    """Refuse a folder that cannot be listed: skipping it would leave its images out silently."""
    raise SourceError(
        f"Cannot list the folder {err.filename!r} ({err.strerror or err}): its images would be "
        "left out. Make it readable (e.g. chmod a+rx), or move it out of the dataset."
    ) from err


# A file that cannot be read is part of the image set as it is now: it gets a fingerprint part
# of its own (so it changes when the file comes back), and reading its pixels raises the
# ImageReadError that extraction fails on or records as a skipped row (on_error).


def file_stat(file: Path) -> bytes:
    try:
        st = os.stat(file)
    except OSError as err:
        return _unreadable(err)
    return struct.pack("<qq", st.st_size, st.st_mtime_ns)


def _file_digest(file: Path) -> bytes:
    h = hashlib.sha256()
    try:
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as err:
        return _unreadable(err)
    return h.digest()


def _unreadable(err: OSError) -> bytes:
    return f"unreadable:{err.errno}".encode()
