"""``ArraySource``: images held in a numpy array."""

from __future__ import annotations

import hashlib
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence

import numpy as np
from PIL import Image

from featpipe.data.images import to_rgb
from featpipe.data.source import ImageSource, check_class_names, is_missing_label, split_code
from featpipe.data.splits import assign_splits
from featpipe.errors import SourceError
from featpipe.words import agrees, counted, listed

# The most classes integer labels make (0..max): a larger label is an id, not a class index.
MAX_INT_CLASSES = 1_000_000


class ArraySource(ImageSource):
    """Images from a uint8 array shaped (N, H, W) (gray) or (N, H, W, 1|3|4).

    ``labels`` are class names (``classes`` defaults to their sorted unique values) or integer
    indices (``classes`` defaults to "0".."max"). ``splits`` are names or codes per row, or None
    to split by the fractions. Ids are ``"<name>/000123"`` unless given (unique strings, one per
    image). RGBA images are composited on white.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: Sequence[int] | Sequence[str] | np.ndarray,
        *,
        classes: Sequence[str] | None = None,
        splits: Sequence[str] | Sequence[int] | np.ndarray | None = None,
        val_fraction: float = 0.0,
        test_fraction: float = 0.0,
        seed: int = 0,
        name: str = "arrays",
        ids: Sequence[str] | None = None,
    ):
        self.images = _check_images(images)
        self.name = name
        n = len(self.images)
        self.classes, self.labels = encode_labels(labels, classes, n, f"ArraySource {name!r}")
        if splits is not None:
            splits = _encode_splits(splits, n)
        width = max(6, len(str(n - 1)))
        self.ids = [f"{name}/{i:0{width}d}" for i in range(n)] if ids is None else _ids(ids)
        if len(self.ids) != n:
            raise SourceError(
                f"ArraySource needs {n} unique ids, one per image; got {len(self.ids)}."
            )
        if len(set(self.ids)) != n:
            twice = next(i for i, c in Counter(self.ids).items() if c > 1)
            raise SourceError(
                f"ArraySource needs {n} unique ids, one per image; {twice!r} is given "
                f"{self.ids.count(twice)} times. Give each image its own id, or leave ids out."
            )
        self.splits = assign_splits(
            self.labels,
            splits,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            seed=seed,
            origin=f"the splits given to ArraySource {name!r}",
            classes=self.classes,
            ids=self.ids,
        )

    def load(self, index: int) -> Image.Image:
        return to_rgb(Image.fromarray(self.images[index]))

    def _fingerprint_parts(self, content: bool) -> Iterator[bytes]:
        # Hashing pixels in memory is cheap, so the content is always what is fingerprinted.
        shape = str(self.images.shape[1:]).encode()
        for image in self.images:
            yield hashlib.sha256(shape + np.ascontiguousarray(image).tobytes()).digest()

    def describe(self) -> dict:
        return {"kind": type(self).__name__, "name": self.name, "shape": list(self.images.shape)}


def _ids(ids: Sequence[str]) -> list[str]:
    """``ids`` as a list of str, checked: stores write them and fingerprints hash them as text."""
    if isinstance(ids, str):
        raise SourceError(f"ArraySource ids are a list of strings, one per image; got {ids!r}.")
    ids = list(ids)
    other = [i for i in ids if not isinstance(i, str)]
    if other:
        raise SourceError(
            f"ArraySource ids are strings; got {type(other[0]).__name__} {other[0]!r}. Pass "
            "e.g. [str(i) for i in ids]."
        )
    return [str(i) for i in ids]  # numpy's str_ as plain str


def _check_images(images: np.ndarray) -> np.ndarray:
    try:
        images = np.asarray(images)
    except ValueError:  # numpy's "inhomogeneous shape": images of several sizes
        shapes = list(dict.fromkeys(str(np.shape(image)) for image in images))
        raise SourceError(
            f"ArraySource needs images of one shape, stacked in one array; got "
            f"{len(images)} images of shapes {listed(shapes, 2, sep=' and ')}. Resize them to "
            "one size first, or write them to files and open the folder as a source."
        ) from None
    if images.dtype != np.uint8:
        raise SourceError(
            f"ArraySource needs uint8 images; got dtype {images.dtype}. Scale to 0..255 and "
            "convert, e.g. (x * 255).round().astype(np.uint8) for floats in [0, 1]."
        )
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] in (3, 4))):
        raise SourceError(
            f"ArraySource needs images shaped (N, H, W) or (N, H, W, 1|3|4); got {images.shape}."
        )
    if len(images) == 0:
        raise SourceError("ArraySource got no images (N = 0).")
    return images


def encode_labels(
    labels: Sequence[int] | Sequence[str] | np.ndarray,
    classes: Sequence[str] | None,
    n: int,
    origin: str = "The labels",
) -> tuple[list[str], np.ndarray]:
    """(class names, int64 label indices) from integer labels or class names (see ArraySource).

    Integer labels without ``classes`` that skip values (0, 5, 9; 1..10) are warned of: the
    classes "0".."max" they make include some without any image, which reports count as
    classes. They are not renumbered: an integer label stays its class's index."""
    if classes is not None:
        classes = [str(c) for c in classes]
        twice = next((c for c, k in Counter(classes).items() if k > 1), None)
        if twice is not None:  # two indices for one name: labels would map to either
            raise SourceError(f"classes names {twice!r} twice ({classes}); name each class once.")
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise SourceError(f"ArraySource needs one label per image ({n}); got shape {labels.shape}.")
    if labels.dtype.kind in "iu":
        if labels.min() < 0:
            raise SourceError(f"Integer labels must be >= 0; got {labels.min()}.")
        if classes is None:
            check_label_max(int(labels.max()), "The labels")
            classes = [str(i) for i in range(int(labels.max()) + 1)]
            _warn_empty_classes(labels, classes, origin)
        if labels.max() >= len(classes):
            raise SourceError(
                f"Integer label {labels.max()} has no class name: classes has {len(classes)} "
                "entries. Pass one name per label value."
            )
        return classes, labels.astype(np.int64)
    if labels.dtype.kind not in "UO":
        raise SourceError(f"Labels must be integers or class names; got dtype {labels.dtype}.")
    _check_labelled(labels, origin)
    names = [str(label) for label in labels]
    classes = [str(c) for c in classes] if classes is not None else sorted(set(names))
    check_class_names(classes, "The labels")
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(names) - set(index))
    if unknown:
        raise SourceError(
            f"Labels {unknown[:5]} are not in classes {classes}. Add them to classes or fix them."
        )
    return classes, np.array([index[name] for name in names], dtype=np.int64)


def _check_labelled(labels: np.ndarray, origin: str) -> None:
    """Raise SourceError for a missing label (see :func:`is_missing_label`)."""
    missing = [row for row, label in enumerate(labels) if is_missing_label(label)]
    if missing:
        first = labels[missing[0]]  # shown as 'nan', not np.float32(nan):
        first = first.item() if isinstance(first, np.generic) else first
        raise SourceError(
            f"{origin}: {counted(len(missing), 'image')} {agrees(len(missing), 'has', 'have')} "
            "no label (None, NaN, NA or a blank name; the "
            f"first is row {missing[0]}, {first!r}), which would make a class of its own. Give "
            "every image its class, or leave the unlabelled images out."
        )


def _warn_empty_classes(labels: np.ndarray, classes: list[str], origin: str) -> None:
    empty = np.setdiff1d(np.arange(len(classes)), labels)
    if not len(empty):
        return
    shown = listed((repr(classes[c]) for c in empty), 5, total=len(empty))
    warnings.warn(
        f"{origin}: integer labels are class indices 0..{len(classes) - 1}, and no image has "
        f"{len(empty):,} of them ({shown}): they make {len(classes):,} classes where "
        f"the images have {len(classes) - len(empty):,}, so reports list classes without images "
        "(and top-5 over classes that cannot occur), and few-shot draws refuse them. If the "
        "labels are names of their classes, give them as text ('5'); to keep classes without "
        "images, name every class (ArraySource's classes, a ClassLabel column).",
        UserWarning,
        stacklevel=4,
    )


def check_label_max(top: int, origin: str) -> None:
    """Raise SourceError when the largest integer label ``top`` is too large to be a class
    index. Integer labels make classes 0..max, so an id or a hash read as a label (a .cls or
    a label column meaning something else) made that many class names: a billion of them
    filled the memory, and one beyond int64 was an OverflowError."""
    if top >= MAX_INT_CLASSES:
        raise SourceError(
            f"{origin}: the integer label {top} would make {top + 1:,} classes "
            f"(integer labels are class indices 0..max; featpipe takes up to "
            f"{MAX_INT_CLASSES:,}): it looks like an id, not a class. Give each image its "
            "class index or class name, or name the field that holds them."
        )


def _encode_splits(splits: Sequence[str] | Sequence[int] | np.ndarray, n: int) -> np.ndarray:
    splits = np.asarray(splits)
    if splits.shape != (n,):
        raise SourceError(f"ArraySource needs one split per image ({n}); got shape {splits.shape}.")
    if splits.dtype.kind in "iu":
        if splits.min() < 0 or splits.max() > 2:
            raise SourceError(
                "Split codes must be 0 (train), 1 (val) or 2 (test); got "
                f"{splits.min()}..{splits.max()}."
            )
        return splits.astype(np.uint8)
    return np.array([split_code(str(s)) for s in splits], dtype=np.uint8)
