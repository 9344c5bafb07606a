"""The ImageSource contract: a sized, indexable collection of labelled images with splits."""

from __future__ import annotations

import hashlib
import math
import unicodedata
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence

import numpy as np
from PIL import Image

from featpipe.errors import ConfigError, SourceError, UnknownNameError, did_you_mean
from featpipe.words import listed

SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")
SPLIT_CODES: dict[str, int] = {name: code for code, name in enumerate(SPLIT_NAMES)}
# A dataset's own split names (folders, files, columns, json fields) and the split each becomes.
SPLIT_ALIASES: dict[str, str] = {
    "train": "train",
    "training": "train",
    "validation": "val",
    "valid": "val",
    "val": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}


def split_alias(name: str) -> str | None:
    """The featpipe split a dataset's own split name stands for (any case), or None."""
    return SPLIT_ALIASES.get(name.lower())


def is_missing_label(value: object) -> bool:
    """Whether a label value stands for no label: None, a NaN of any float type (numpy's
    float32 too), pandas' NA or a blank name. As text each would become a class of its own
    ('None', 'nan', '<NA>', ''), which heads learn and reports count."""
    if isinstance(value, str):
        return not value.strip()
    try:
        return value is None or bool(value != value)  # only NaN differs from itself
    except TypeError:
        return True  # pandas' NA: its comparisons give NA, which has no truth value


def count_splits(codes: np.ndarray) -> dict[str, int]:
    """Rows per split name, from an array of split codes."""
    return {name: int((codes == code).sum()) for name, code in SPLIT_CODES.items()}


def check_class_names(classes: Iterable[str], origin: str) -> None:
    """Raise SourceError when two class names are one name spelt two ways: in two Unicode
    forms (an accent composed, NFC, or decomposed, NFD, as macOS file names are), which print
    alike, with spaces at the ends ('cat' and 'cat '), or one number ('1' and '01', as a
    spreadsheet may write it). Any would be two classes, each with part of the images.
    Names that differ only in case ('Cat' and 'cat') are warned of (:func:`_warn_case_only`)."""
    classes = list(classes)
    _warn_case_only(classes, origin)
    seen: dict[object, str] = {}
    for name in classes:
        first = seen.setdefault(_class_key(name), name)
        if first == name:
            continue
        if first.strip() != first or name.strip() != name:
            raise SourceError(
                f"{origin}: classes {first!r} and {name!r} differ only by spaces at their ends, "
                "which would make them two classes. Spell each class one way."
            )
        if unicodedata.normalize("NFC", first) == unicodedata.normalize("NFC", name):
            raise SourceError(
                f"{origin}: classes {first!r} and {name!r} are one name in two Unicode forms "
                f"({first!a} and {name!a}: an accent composed or decomposed), which "
                "would be two classes that print alike. Spell them one way, e.g. rename to "
                "unicodedata.normalize('NFC', name)."
            )
        raise SourceError(
            f"{origin}: classes {first!r} and {name!r} are one number spelt two ways, which "
            "would be two classes. Spell each class one way (e.g. keep the leading zeros "
            "everywhere, or nowhere)."
        )


def _warn_case_only(classes: list[str], origin: str) -> None:
    """Warn of class names that differ only in case ('Cat' and 'cat', two copies of a dataset
    merged): likely one class split in two, but not surely (letters 'A' and 'a' of a
    handwriting set are two classes, and single characters are left alone), so not merged."""
    spellings: dict[str, list[str]] = {}
    for name in classes:
        if len(name.strip()) > 1:
            spellings.setdefault(name.casefold(), []).append(name)
    alike = [names for names in spellings.values() if len(names) > 1]
    if alike:
        groups = (" and ".join(map(repr, names)) for names in alike)
        shown = listed(groups, sep="; ", total=len(alike))
        warnings.warn(
            f"{origin}: classes {shown} differ only in case. They are read as "
            "separate classes, so if they are one class its images are split between them; "
            "featpipe does not merge them (some datasets' classes differ only in case). To "
            "make them one class, give its images one name (one folder, or fixed labels).",
            UserWarning,
            stacklevel=3,
        )


def _class_key(name: str) -> object:
    """What two spellings of one class name share (see check_class_names)."""
    try:
        number = float(name)  # float() ignores spaces at the ends
    except ValueError:
        return unicodedata.normalize("NFC", name.strip())
    return name.strip() if math.isnan(number) else number


def split_code(split: str) -> int:
    """The uint8 code stored for a split name: the one place split names are looked up."""
    try:
        return SPLIT_CODES[split]
    except (KeyError, TypeError):
        raise UnknownNameError(
            f"Unknown split {split!r}.{did_you_mean(str(split), SPLIT_NAMES)} "
            f"Valid splits: {', '.join(SPLIT_NAMES)}."
        ) from None


def row_ids(split: str, n: int) -> list[str]:
    """Ids ``split/00000`` ... for the rows of a dataset's own split, in its order."""
    width = max(5, len(str(n - 1)))
    return [f"{split}/{i:0{width}d}" for i in range(n)]


class ImageSource(ABC):
    """Labelled images with stable ids and a train/val/test assignment.

    Subclasses set ``classes`` (list of names), ``ids`` (list of stable strings),
    ``labels`` (int64 array indexing ``classes``) and ``splits`` (uint8 array of
    ``SPLIT_CODES``), and implement :meth:`load` and :meth:`_fingerprint_parts`.
    """

    classes: list[str]
    ids: list[str]
    labels: np.ndarray
    splits: np.ndarray

    @abstractmethod
    def load(self, index: int) -> Image.Image:
        """The image at ``index`` as an RGB PIL image; raises ImageReadError naming the file."""

    def read_bytes(self, index: int) -> bytes | None:
        """The encoded file bytes (for GPU decoding), or None when the image lives in memory."""
        return None

    def path(self, index: int) -> str | None:
        """The file behind ``index``, when there is one. ``--decode fast`` decodes that file
        itself instead of calling ``load`` (``featpipe.data.images.load_resized``), so a source
        whose ``load`` changes the file's pixels returns None here."""
        return None

    @abstractmethod
    def _fingerprint_parts(self, content: bool) -> Iterable[bytes]:
        """Exactly one bytes object per sample, in row order, that changes when that image
        changes: file size and mtime, or the file's content (or pixels) when ``content``."""

    def describe(self) -> dict:
        """A short JSON-serialisable description for provenance (kind, root, ...)."""
        return {"kind": type(self).__name__}

    def __len__(self) -> int:
        return len(self.ids)

    def fingerprint(self, content: bool = False, parts: Iterable[bytes] | None = None) -> str:
        """sha256 over ids, labels, splits, class names and per-file size/mtime (or contents).
        ``parts``: with ``content`` only, each image's content, already read (as
        :func:`featpipe.evaluate.leakage.source_hashes` collects them), so the files are read
        once. Sizes and times are cheap to read again, so they are never passed in."""
        if parts is not None and not content:
            # parts are contents: hashed as sizes and times they would give a wrong fingerprint
            raise ConfigError(
                "fingerprint(parts=...) got parts with content=False; parts are the images' "
                "contents: pass content=True with them, or leave parts out."
            )
        h = hashlib.sha256()
        # surrogateescape: file names that are not UTF-8 reach here as lone surrogates (valid
        # UTF-8 encodes as before, so existing fingerprints stay)
        h.update("\x1f".join(self.classes).encode("utf-8", "surrogateescape"))
        h.update("\x1e".join(self.ids).encode("utf-8", "surrogateescape"))
        h.update(np.ascontiguousarray(self.labels, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(self.splits, dtype=np.uint8).tobytes())
        for part in self._fingerprint_parts(content) if parts is None else parts:
            h.update(part)
        return h.hexdigest()

    def indices(self, split: str | None = None) -> np.ndarray:
        """Row indices of one split (all rows when ``split`` is None)."""
        if split is None:
            return np.arange(len(self))
        return np.flatnonzero(self.splits == split_code(split))

    def split_counts(self) -> dict[str, int]:
        return count_splits(self.splits)

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageSource:
        """A view on some rows of this source (same classes, ids, splits): row indices, each
        at most once, in the order given, or a boolean mask with one entry per row."""
        return SubsetSource(self, indices)


class SubsetSource(ImageSource):
    """Rows ``indices`` of a parent source (indices or a boolean mask, see ``subset``)."""

    def __init__(self, parent: ImageSource, indices: Sequence[int] | np.ndarray):
        indices = _subset_rows(indices, len(parent))
        self.parent = parent
        self.rows = indices
        self.classes = list(parent.classes)
        self.ids = [parent.ids[i] for i in indices]
        self.labels = np.asarray(parent.labels)[indices]
        self.splits = np.asarray(parent.splits)[indices]

    def load(self, index: int) -> Image.Image:
        return self.parent.load(int(self.rows[index]))

    def read_bytes(self, index: int) -> bytes | None:
        return self.parent.read_bytes(int(self.rows[index]))

    def path(self, index: int) -> str | None:
        return self.parent.path(int(self.rows[index]))

    def _fingerprint_parts(self, content: bool) -> Iterable[bytes]:
        parts = list(self.parent._fingerprint_parts(content))
        return [parts[i] for i in self.rows]

    def describe(self) -> dict:
        return {**self.parent.describe(), "subset": len(self.rows)}


def _subset_rows(indices: Sequence[int] | np.ndarray, n: int) -> np.ndarray:
    """int64 rows of a source of ``n`` rows from indices or a boolean mask, checked: a
    repeated row would be two samples with one id (and one image in two splits)."""
    given = np.asarray(indices)
    if given.dtype == bool:
        if given.shape != (n,):
            raise ConfigError(
                f"A boolean mask selects rows of a source of {n} rows with one entry per row; "
                f"got shape {given.shape}. Build it from the source, e.g. source.splits == 2."
            )
        return np.flatnonzero(given)
    if given.size == 0:
        return np.zeros(0, np.int64)
    if given.ndim != 1 or given.dtype.kind not in "iu":
        raise ConfigError(
            "subset takes integer row indices or a boolean mask with one entry per row; got "
            f"an array of dtype {given.dtype} and shape {given.shape}."
        )
    rows = given.astype(np.int64)
    outside = rows[(rows < 0) | (rows >= n)]
    if len(outside):
        raise ConfigError(
            f"Subset indices must lie in [0, {n}) (the source's rows); got "
            f"{', '.join(map(str, outside[:5]))}."
        )
    unique, counts = np.unique(rows, return_counts=True)
    if (counts > 1).any():
        twice = unique[counts > 1]
        raise ConfigError(
            f"Subset indices name row {twice[0]} more than once"
            f"{f' (and {len(twice) - 1} other rows)' if len(twice) > 1 else ''}; each row may be "
            "taken once. Pass np.unique(indices) to keep each row once."
        )
    return rows
