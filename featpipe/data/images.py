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

EXIF orientation is not applied, like torchvision's ``ImageFolder`` loader and ``decode_jpeg``,
so that the CPU and GPU decoding paths see the same pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from featpipe.errors import ImageReadError

_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_WHITE = (255, 255, 255)


def load_rgb(path: str | Path) -> Image.Image:
    """Open and fully decode ``path`` as an 8-bit RGB image.

    Raises ImageReadError naming the file when it is missing, unreadable or not a valid image.
    """
    try:
        with Image.open(path) as img:
            img.load()  # decode now so that truncated files fail here, not later
            return to_rgb(img)
    except ImageReadError as err:
        raise ImageReadError(f"{path}: {err}") from err
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ImageReadError(
            f"Cannot read image {str(path)!r}: {err}. Re-encode the file (e.g. save it again as "
            "PNG or JPEG) or remove it from the dataset."
        ) from err


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
            f"Cannot convert image mode {mode!r} to RGB ({err}). Re-encode the file as RGB."
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
