"""Decode image files into 8-bit RGB, whatever their mode.

Conversion rules (one place, so every source and backbone sees the same pixels):

- ``1``, ``L``, ``P`` without transparency, ``CMYK``, ``YCbCr``, ...: Pillow's own conversion.
- Anything with alpha (``RGBA``, ``LA``, ``PA``, ``P`` with a transparency key) is composited
  onto white: transparent backgrounds are usually meant to be shown on paper-white, and
  dropping alpha instead would expose whatever colour happens to sit under it.
- 16-bit integer (``I;16``, ``I;16B``, ...) is scaled by 255/65535, not clipped.
- 32-bit integer ``I``: values within 0..65535 are treated as 16-bit data (this is how
  16-bit TIFF and older PNG decoders present it); wider ranges are rescaled min..max.
- float ``F``: values within [0, 1] are scaled by 255; other ranges are rescaled min..max.
- Animated images (GIF, WebP, ...): the first frame.

EXIF orientation is not applied, like torchvision's ``ImageFolder`` loader and ``decode_jpeg``,
so that the CPU and GPU decoding paths see the same pixels.

A file that cannot be used raises :class:`ImageReadError` with one line naming the file, the
reason (``truncated file``, ``not an image``, ``empty file``, ``permission denied``,
``image too large (N pixels > limit of M)``, ...) and the fix. Images above
``PIL.Image.MAX_IMAGE_PIXELS`` are refused outright: Pillow only warns up to twice that limit,
and a warning is easy to miss in a long run.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from featpipe.errors import ImageReadError

_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_WHITE = (255, 255, 255)
_REENCODE = "Re-encode the file (e.g. save it again as PNG or JPEG) or remove it from the dataset."
# Pillow's decoding failures; any other exception is a bug and propagates as it is.
_DECODE_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)


def load_rgb(path: str | Path) -> Image.Image:
    """Open and fully decode ``path`` as an 8-bit RGB image.

    Raises ImageReadError naming the file and the reason when it is missing, unreadable, too
    large or not a valid image.
    """
    return _decode(path, path)


def decode_rgb(data: bytes, name: str) -> Image.Image:
    """:func:`load_rgb` for an encoded image in memory; ``name`` (its path) is for messages."""
    return _decode(io.BytesIO(data), name, size=len(data))


def _decode(file: str | Path | io.BytesIO, name: str | Path, size: int | None = None):
    try:
        with _strict_size(), Image.open(file) as img:
            img.load()  # decode now so that truncated files fail here, not later
            return to_rgb(img)
    except ImageReadError as err:  # from to_rgb
        raise ImageReadError(
            f"Cannot read image {str(name)!r}: {err.reason}. {_REENCODE}",
            path=str(name),
            reason=err.reason,
        ) from err
    except _DECODE_ERRORS as err:
        raise read_error(name, err, size) from err


def check_header(data: bytes, name: str) -> None:
    """Raise ImageReadError (as :func:`load_rgb` would) when the header of the encoded image
    ``data`` is not a known format or claims more pixels than Pillow's limit; the pixels are
    not decoded. The GPU path checks the files it ships undecoded with it."""
    try:
        with _strict_size(), Image.open(io.BytesIO(data)):
            pass
    except _DECODE_ERRORS as err:
        raise read_error(name, err, size=len(data)) from err


def read_error(path: str | Path, err: BaseException, size: int | None = None) -> ImageReadError:
    """The one-line ImageReadError for ``err``, raised while reading or decoding ``path``
    (``size``: the file's length in bytes, when known)."""
    reason, fix = _explain(path, err, size)
    return ImageReadError(
        f"Cannot read image {str(path)!r}: {reason}. {fix}", path=str(path), reason=reason
    )


def _explain(path: str | Path, err: BaseException, size: int | None) -> tuple[str, str]:
    """(reason, how to fix it) for a read or decode error."""
    if isinstance(err, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        found = re.search(r"\((\d+) pixels\)", str(err))
        pixels = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
        return (
            f"image too large ({pixels} > limit of {Image.MAX_IMAGE_PIXELS:,})",
            "Downscale or remove it, or raise PIL.Image.MAX_IMAGE_PIXELS if you trust the file.",
        )
    if isinstance(err, UnidentifiedImageError):
        if size is None:
            size = _size(path)
        if size == 0:
            return "empty file", "Restore the file or remove it from the dataset."
        return "not an image (unknown format)", _REENCODE
    if isinstance(err, PermissionError):
        return "permission denied", "Make it readable (chmod) or remove it from the dataset."
    if isinstance(err, FileNotFoundError):
        return "file not found", "Restore it, or open the source again if it was removed."
    if isinstance(err, IsADirectoryError):
        return "is a folder, not a file", "Remove or rename it."
    if isinstance(err, OSError) and err.errno == errno.ELOOP:
        return "symlink loop", "Point the link at an image or remove it."
    text = str(err).strip() or type(err).__name__
    if isinstance(err, EOFError) or "truncated" in text.lower():
        return "truncated file", _REENCODE
    return f"cannot decode ({text})", _REENCODE


def _size(path: str | Path) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None


@contextlib.contextmanager
def _strict_size() -> Iterator[None]:
    """Pillow's decompression-bomb warning raised as an error (not thread-safe, like every
    ``catch_warnings``: concurrent decoding threads could at worst keep the stricter filter)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def to_rgb(img: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of an in-memory PIL image (see the module notes for the rules)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_scale_to_uint8(np.asarray(img), mode)).convert("RGB")
    try:
        return img.convert("RGB")
    except ValueError as err:
        raise ImageReadError(
            f"Cannot convert image mode {mode!r} to RGB ({err}). Re-encode the file as RGB.",
            reason=f"cannot convert mode {mode!r} to RGB",
        ) from err


def _scale_to_uint8(pixels: np.ndarray, mode: str) -> np.ndarray:
    """Map 16/32-bit integer or float pixels onto 0..255 (rules in the module docstring)."""
    values = np.nan_to_num(pixels.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if mode.startswith("I;16") or (mode == "I" and lo >= 0 and hi <= 65535):
        scaled = values * (255.0 / 65535.0)
    elif mode == "F" and lo >= 0 and hi <= 1:
        scaled = values * 255.0
    elif hi > lo:
        scaled = (values - lo) * (255.0 / (hi - lo))
    else:
        scaled = np.zeros_like(values)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
