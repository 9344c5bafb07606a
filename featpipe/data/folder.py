"""``ImageFolderSource``: a class-per-folder tree, optionally with train/val/test subfolders."""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from featpipe.data.files import FileSource, is_hidden, repeated_file, unlisted
from featpipe.data.source import (
    SPLIT_ALIASES,
    SPLIT_CODES,
    SPLIT_NAMES,
    ImageSource,
    SubsetSource,
    check_class_names,
    split_alias,
)
from featpipe.data.splits import assign_splits
from featpipe.errors import ConfigError, SourceError
from featpipe.words import agrees, counted

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# Other extensions of photos (a browser's .jfif JPEGs, a phone's .heic): not read by default,
# so files bearing them are counted and warned of, not left out silently.
_OTHER_PHOTOS = (".jfif", ".jpe", ".avif", ".heic", ".heif", ".jp2", ".ppm", ".pgm", ".tga")
# A download that has not finished (Firefox, Chrome, Safari, temporary files): an image that
# is missing from the set, so these are named in the same warning.
_PARTIAL = (".part", ".crdownload", ".download", ".tmp")


class ImageFolderSource(FileSource):
    """Images laid out as ``root/<class>/<image>`` or ``root/<split>/<class>/<image>``.

    The split layout is used when every folder under ``root`` is named after a split, in any
    case: train/training, val/valid/validation/dev, test/testing (``train`` is required). Split
    names beside other folders are refused: they could be splits or classes. A missing ``val``
    (or ``test``) folder is carved out of ``train`` with ``val_fraction`` (``test_fraction``);
    a fraction for a folder that exists is ignored with a warning. The plain layout is split
    by both fractions, stratified and seeded.

    Class folders are searched recursively; hidden files and folders (and macOS zips'
    ``__MACOSX`` folders) are skipped; extensions match case-insensitively. Classes are the
    sorted union of class folder names over all splits. A split folder that lacks some class is
    allowed (small val/test sets often do) but warns, since it is also what a misspelt class
    folder looks like.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        val_fraction: float = 0.0,
        test_fraction: float = 0.0,
        seed: int = 0,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
    ):
        self.root = Path(root)
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.seed = seed
        self.extensions = _normalise_extensions(extensions)
        if not self.root.is_dir():
            what = "is not a folder" if self.root.exists() else "does not exist"
            raise SourceError(f"Image folder {str(self.root)!r} {what}.")

        self._left_out: list[Path] = []  # other photos and partial downloads
        tops = _subfolders(self.root)
        split_of = _split_folders(self.root, tops)
        self.layout = "splits" if split_of else "flat"
        # {split folder's name as on disk: its classes}; the flat layout is one train "folder"
        per_split = {name: self._scan_classes(self.root / name) for name in split_of}
        if self.layout == "flat":
            split_of = {".": "train"}
            per_split = {".": self._scan_classes(self.root)}
        for folder in sorted({self.root, *(self.root / name for name in split_of)}):
            self._warn_loose_images(folder)
        if self._left_out:
            warnings.warn(self._left_out_message(), UserWarning, stacklevel=2)
        self.classes = sorted({c for found in per_split.values() for c in found})
        self._check_classes(per_split)

        rows = sorted(
            (file.relative_to(self.root).as_posix(), split_of[folder], cls)
            for folder, found in per_split.items()
            for cls, files in found.items()
            for file in files
        )
        class_index = {name: i for i, name in enumerate(self.classes)}
        self.ids = [row[0] for row in rows]
        self.files = [self.root / row[0] for row in rows]
        self._check_once()
        self.labels = np.array([class_index[row[2]] for row in rows], dtype=np.int64)
        given = np.array([SPLIT_CODES[row[1]] for row in rows], dtype=np.uint8)
        self.splits = assign_splits(
            self.labels,
            given,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            seed=seed,
            origin=f"image folder {str(self.root)!r}",
            ids=self.ids,
        )

    def describe(self) -> dict:
        return {
            "kind": type(self).__name__,
            "root": str(self.root.resolve()),
            "layout": self.layout,
            "images": len(self),
            "classes": len(self.classes),
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "seed": self.seed,
        }

    def _scan_classes(self, folder: Path) -> dict[str, list[Path]]:
        """{class name: image files} for the class folders directly under ``folder``."""
        found = {}
        for name in _subfolders(folder):
            files = _image_files(folder / name, self.extensions, self._left_out)
            if not files:
                raise SourceError(
                    f"Class folder {str(folder / name)!r} contains no images with extensions "
                    f"{', '.join(self.extensions)}. Add images or remove the folder."
                )
            found[name] = files
        if not found:
            raise SourceError(
                f"No class folders in {str(folder)!r}: expected images laid out as "
                f"<root>/<class>/<image> or <root>/train/<class>/<image>, with extensions "
                f"{', '.join(self.extensions)}."
            )
        return found

    def _left_out_message(self) -> str:
        partial = {f for f in self._left_out if f.name.lower().endswith(_PARTIAL)}
        photos = Counter(f.suffix.lower() for f in self._left_out if f not in partial)
        said = []
        if photos:
            counts = ", ".join(counted(n, f"{ext} file") for ext, n in sorted(photos.items()))
            said.append(
                f"{counts}: featpipe reads {', '.join(self.extensions)}. Convert them "
                "(e.g. to .jpg or .png), or give them to ImageFolderSource's extensions if "
                "Pillow decodes them"
            )
        if partial:
            names = ", ".join(f.relative_to(self.root).as_posix() for f in sorted(partial)[:3])
            said.append(
                f"{counted(len(partial), 'partial download')} "
                f"({names}{', ...' if len(partial) > 3 else ''}"
                "): finish or repeat each download, or delete the file"
            )
        return f"Image folder {str(self.root)!r} leaves out {'; and '.join(said)}."

    def _warn_loose_images(self, folder: Path) -> None:
        """Warn of images directly in ``folder``, where class folders are expected: they are
        in no class, so they are left out."""
        loose = sorted(
            e.name
            for e in _entries(folder)
            if not e.name.startswith(".")
            and e.name.lower().endswith(self.extensions)
            and e.is_file()
        )
        if loose:
            warnings.warn(
                f"{counted(len(loose), 'image')} directly in {str(folder)!r} "
                f"({', '.join(loose[:3])}"
                f"{', ...' if len(loose) > 3 else ''}) {agrees(len(loose), 'is', 'are')} in no "
                f"class folder and {agrees(len(loose), 'is', 'are')} left out. Move each into "
                "its class folder if it belongs to the dataset.",
                UserWarning,
                stacklevel=3,
            )

    def _check_once(self) -> None:
        """Each image file listed once, though symlinks or hard links may reach it from two
        places."""
        repeat = repeated_file(self.files)
        if repeat is not None:
            first, later, real, other = repeat
            how = (
                f"through a symlink: {self.ids[first]!r} and {self.ids[later]!r} are both {real!r}"
                if real == other
                else f"through a hard link: {self.ids[first]!r} and {self.ids[later]!r} are one "
                "file"
            )
            raise SourceError(
                f"Image folder {str(self.root)!r} reaches one image twice, {how}. Each image "
                "may appear once (twice, it can land in train and in test, or in two classes); "
                "remove one of the links."
            )

    def _check_classes(self, per_split: dict[str, dict[str, list[Path]]]) -> None:
        check_class_names(self.classes, f"Image folder {str(self.root)!r}")
        if len(self.classes) < 2:
            found = f"only {self.classes[0]!r}" if self.classes else "none"
            raise SourceError(
                f"A classifier needs at least two classes; found {found} in {str(self.root)!r}. "
                "Put each class's images in its own folder: <root>/<class>/<image>."
            )
        for split, found in per_split.items():
            missing = sorted(set(self.classes) - set(found))
            if missing:
                warnings.warn(
                    f"Split folder {str(self.root / split)!r} has no folder for "
                    f"{agrees(len(missing), 'class', 'classes')} "
                    f"{', '.join(map(repr, missing))} that other splits have; check the spelling "
                    "if this is not intended.",
                    UserWarning,
                    stacklevel=3,
                )


def folder_enclosing(source: ImageSource, path: str | Path) -> Path | None:
    """The root of the image folder ``source`` reads (through any subset) where ``path`` lies
    inside it, else None: a folder written there would be read back by the next scan, as a
    class folder without images or its files as images of a class."""
    while isinstance(source, SubsetSource):
        source = source.parent
    if not isinstance(source, ImageFolderSource):
        return None
    root, inner = source.root.resolve(), Path(path).resolve()
    return root if inner == root or root in inner.parents else None


def _split_folders(root: Path, tops: list[str]) -> dict[str, str]:
    """{folder name: featpipe split} when the folders ``tops`` under ``root`` are split
    folders; {} when they are class folders. Raises SourceError where it cannot tell."""
    split_of = {name: split_alias(name) for name in tops if split_alias(name)}
    if not split_of:
        return {}
    others = [name for name in tops if name not in split_of]
    if others:
        raise SourceError(
            f"{str(root)!r} has {agrees(len(split_of), 'folder', 'folders')} "
            f"{', '.join(map(repr, split_of))} named like a split beside "
            f"{agrees(len(others), 'folder', 'folders')} {', '.join(map(repr, others[:5]))} "
            f"that {agrees(len(others), 'is', 'are')} not: featpipe cannot "
            "tell whether they are split folders or classes. For splits, move the class folders "
            "into them (root/train/<class>/..., root/val/<class>/...); for classes, rename "
            f"those named like a split ({', '.join(sorted(SPLIT_ALIASES))}, in any case)."
        )
    for split in SPLIT_NAMES:
        same = sorted(name for name, s in split_of.items() if s == split)
        if len(same) > 1:
            raise SourceError(
                f"{str(root)!r} has folders {' and '.join(map(repr, same))}, which name the same "
                f"split ({split}). Merge them into one folder."
            )
    if "train" not in split_of.values():
        raise SourceError(
            f"{str(root)!r} has split folders {', '.join(tops)} but no 'train' folder. Add "
            "root/train/<class>/..., or point at a folder of class folders."
        )
    return split_of


def _normalise_extensions(extensions: Sequence[str]) -> tuple[str, ...]:
    if isinstance(extensions, str):
        extensions = (extensions,)
    out = tuple(sorted({"." + e.lower().lstrip(".") for e in extensions if e.strip(".")}))
    if not out:
        raise ConfigError(f"extensions must name at least one file type; got {extensions!r}.")
    return out


def _subfolders(folder: Path) -> list[str]:
    """Names of the visible sub-folders of ``folder`` (symlinks followed, except links back
    to ``folder`` or a folder above it, which would loop), sorted."""
    here = os.path.realpath(folder)
    return sorted(
        e.name
        for e in _entries(folder)
        if not is_hidden(e.name) and e.is_dir() and not _encloses(os.path.realpath(e.path), here)
    )


def _entries(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except OSError as err:
        unlisted(err)


def _image_files(folder: Path, extensions: tuple[str, ...], left_out: list[Path]) -> list[Path]:
    """Image files anywhere under ``folder``, skipping hidden files and folders; other photos
    and partial downloads are added to ``left_out``.

    Symlinks are followed, but each real folder is visited once and links back to ``folder``
    or a folder above it are not followed: a symlink loop would otherwise list the same
    images again at every level of the loop, or never end (two loops are exponential).
    """
    top = os.path.realpath(folder)
    seen: set[str] = set()
    files = []
    for dirpath, dirnames, filenames in os.walk(folder, onerror=unlisted, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen or (real != top and _encloses(real, top)):
            dirnames[:] = []
            continue
        seen.add(real)
        # sorted: which of two links to one folder is listed must not depend on the disk
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
        for name in filenames:
            if name.startswith("."):
                continue
            if name.lower().endswith(extensions):
                files.append(Path(dirpath, name))
            elif name.lower().endswith(_OTHER_PHOTOS + _PARTIAL):
                left_out.append(Path(dirpath, name))
    return files


def _encloses(outer: str, inner: str) -> bool:
    """Whether real path ``outer`` is ``inner`` or a folder above it."""
    return os.path.commonpath([outer, inner]) == outer
