"""Decode image files into 8-bit RGB, whatever their mode.

Conversion rules (one place, so every source and backbone sees the same pixels):

- ``1``, ``L``, ``P`` without transparency, ``CMYK``, ``YCbCr``, ...: Pillow's own conversion.
- Anything with alpha (``RGBA``, ``LA``, ``PA``, or any mode with a transparency key, as a
  PNG ``tRNS`` chunk gives ``P``, ``L`` and ``RGB`` images) is composited onto white:
  transparent backgrounds are usually meant to be shown on paper-white, and dropping alpha
  instead would expose whatever colour happens to sit under it.
- 16-bit integer (``I;16``, ``I;16B``, ...) is scaled by 255/65535, not clipped. A file whose
  values all fit in 12 bits is warned of (once a process): it is most likely 10- or 12-bit
  sensor data saved unscaled, which decodes near-black. The depth is not guessed from the
  values (that would brighten a dark 16-bit image), and PNG's ``sBIT`` chunk is no help: it
  marks data already scaled up to 16 bits, which decodes right as it is.
- 32-bit integer ``I``: values within 0..65535 are treated as 16-bit data (this is how
  16-bit TIFF and older PNG decoders present it); wider ranges are rescaled min..max.
- float ``F``: values within [0, 1] are scaled by 255; other ranges are rescaled min..max.
- Animated images (GIF, WebP, ...): the first frame.

``min_size`` (the ``fast`` decode): a JPEG file may be decoded at 1/2, 1/4 or 1/8 of its size
by libjpeg's DCT scaling (``PIL.Image.draft``), at the smallest scale whose short side stays at
least ``min_size``; the resize that follows then starts from fewer pixels. The pixels differ a
little from a full decode (benchmarks/README.md measures how little); other formats, and JPEGs
too small to halve, decode exactly.

With the ``jpeg`` extra (simplejpeg) installed, a JPEG goes through libjpeg-turbo's own API
instead of Pillow's, in every decode here: the same library at the same scale, so the same
pixels (tests/test_decode.py checks bit equality), without Pillow's overhead around it. Any
file it does not take as it is (CMYK, over the pixel limit, a decoder warning or error) goes to
Pillow, whose pixels, or one-line error, stand.

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
import torch
from PIL import Image, UnidentifiedImageError

from featpipe.errors import ImageReadError, unknown_name

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


DECODES = ("exact", "fast")
# Pillow's formats that are JPEG streams (MPO: a camera's multi-picture JPEG, whose first image
# Pillow and libjpeg-turbo decode alike)
_JPEG_FORMATS = ("JPEG", "MPO")
# JPEG colour spaces libjpeg-turbo turns into RGB as Pillow does (CMYK and YCCK: Pillow inverts
# Adobe's CMYK itself)
_TURBO_COLORSPACES = {"YCbCr", "Gray", "RGB"}

try:  # the jpeg extra: JPEG files decoded through libjpeg-turbo's own API (module notes)
    import simplejpeg as _simplejpeg
except ImportError:
    _simplejpeg = None


def load_rgb(path: str | Path, min_size: int | None = None) -> Image.Image:
    """Open and fully decode ``path`` as an 8-bit RGB image (a JPEG at reduced scale, short
    side still >= ``min_size``, when that is given: see the module notes).

    Raises ImageReadError naming the file and the reason when it is missing, unreadable, too
    large or not a valid image.
    """
    return _decode(path, path, min_size=min_size)[0]


def decode_rgb(data: bytes, name: str) -> Image.Image:
    """:func:`load_rgb` for an encoded image in memory; ``name`` (its path) is for messages."""
    return _decode(io.BytesIO(data), name, size=len(data))[0]


def check_decode(decode: str) -> str:
    """``decode`` when it is one of DECODES; else the standard unknown-name error."""
    if decode not in DECODES:
        raise unknown_name("decode", decode, DECODES)
    return decode


def load_source_image(source, index: int, min_size: int | None = None) -> Image.Image:
    """``source.load(index)``; with ``min_size`` and a file behind the row, that file decoded
    at the reduced scale :func:`load_rgb` allows (in-memory images as they are)."""
    path = source.path(index) if min_size else None
    return source.load(index) if path is None else load_rgb(path, min_size)


def load_resized(source, index: int, short_side: int, interpolation: str) -> torch.Tensor:
    """Row ``index`` of ``source`` as a uint8 (3, H, W) tensor, its short side resized to
    ``short_side`` when its JPEG file could be decoded at a reduced DCT scale (the ``fast``
    decode for resize-then-crop transforms); otherwise unresized, as ``source.load`` gives
    it, so that the exact path's pixels stay exact.

    The scaled image is resized onto exactly the size and area a full decode would be resized
    to: ``ceil(W / scale)`` pixels cover only ``W / scale`` of the original's. torch's
    antialiased resize with an explicit ``scale_factor`` (not recomputed from the sizes) maps
    output pixels onto that area, as Pillow's ``box`` does (within one grey level), at a third
    of Pillow's cost. Resizing the rounded-up image as if it covered everything instead doubled
    the mean difference from a full decode.
    """
    path = source.path(index)
    if path is None:
        return pil_to_uint8(source.load(index))
    pixels, full = _decode_scaled(path, short_side)
    if pixels.shape[1:] == (full[1], full[0]):
        return pixels
    width, height = full
    scale = draft_scale(full, short_side)  # how many original pixels one scaled pixel covers
    if width <= height:  # torchvision's rule for a short-side resize
        size = (short_side, int(short_side * height / width))
    else:
        size = (int(short_side * width / height), short_side)
    # + 1e-3 pixel: where W / scale is whole, floor(W / scale * factor) must not round down
    # below the size (it moves the sampling grid by 1e-5 pixel)
    factors = ((size[1] + 1e-3) * scale / height, (size[0] + 1e-3) * scale / width)
    resized = torch.nn.functional.interpolate(
        pixels[None],
        scale_factor=factors,
        mode=interpolation,
        antialias=interpolation != "nearest",
        recompute_scale_factor=False,
    )[0]
    return resized[:, : size[1], : size[0]]  # floor(ceil(H / scale) * factor): size or size + 1


@contextlib.contextmanager
def pillow_only() -> Iterator[None]:
    """Within the block, Pillow decodes every file even where the ``jpeg`` extra is installed
    (benchmarks/extract_throughput.py measures what the extra gains; not thread-safe)."""
    global _simplejpeg
    saved, _simplejpeg = _simplejpeg, None
    try:
        yield
    finally:
        _simplejpeg = saved


def jpeg_decoder() -> str:
    """Which library decodes JPEG files here (for benchmark records)."""
    if _simplejpeg is None:
        return "pillow"
    return f"simplejpeg {_simplejpeg.__version__}"


def _decode_scaled(path: str | Path, min_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """``path`` decoded at the scale :func:`draft_scale` allows, as uint8 (3, H, W) pixels,
    and the file's full (width, height)."""
    decoded = _turbo_decode(path, min_size)
    if decoded is not None:
        pixels, full = decoded
        return torch.from_numpy(pixels).permute(2, 0, 1), full
    img, full = _pil_decode(path, path, min_size=min_size)
    return pil_to_uint8(img), full


def _turbo_decode(
    file: str | Path | io.BytesIO, min_size: int | None = None
) -> tuple[np.ndarray, tuple[int, int]] | None:
    """(H, W, 3) uint8 pixels and the full (width, height) of a JPEG decoded by libjpeg-turbo
    through simplejpeg, as Pillow would decode it (at the scale :func:`draft_scale` allows for
    ``min_size``); None where Pillow must decode the file instead: simplejpeg missing, not a
    JPEG, a colour space Pillow converts itself (CMYK), more pixels than Pillow's limit, any
    decoder warning or error (Pillow then reads it as it always has, or raises its error)."""
    if _simplejpeg is None:
        return None
    try:
        if isinstance(file, io.BytesIO):
            data = file.getvalue()
        else:
            with open(file, "rb") as f:  # a PNG is not read here in full, then by Pillow
                data = f.read(2)
                data += f.read() if data == b"\xff\xd8" else b""
        if not data.startswith(b"\xff\xd8"):
            return None
        height, width, colorspace, _ = _simplejpeg.decode_jpeg_header(data)
        limit = Image.MAX_IMAGE_PIXELS
        if colorspace not in _TURBO_COLORSPACES or (limit and width * height > limit):
            return None
        scale = draft_scale((width, height), min_size) if min_size else 1
        # libjpeg-turbo picks the smallest of its M/8 scales that covers these: 1/scale, the
        # scale Pillow's draft decodes at (ceil, as libjpeg rounds the scaled size up)
        pixels = _simplejpeg.decode_jpeg(
            data, "RGB", min_height=-(-height // scale), min_width=-(-width // scale)
        )
    except (OSError, ValueError):
        return None
    return pixels, (width, height)


def pil_to_uint8(img: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a uint8 (3, H, W) tensor (channels-last in memory, which torch's
    uint8 resize kernels take as they are)."""
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)


def draft_scale(size: tuple[int, int], min_size: int) -> int:
    """The DCT scale (1, 2, 4 or 8) a ``size`` JPEG decodes at so that its short side stays
    at least ``min_size`` (Pillow's own rule in ``JpegImageFile.draft``); 1 for a JPEG
    already smaller than ``min_size``."""
    ratio = min(size) // max(1, min_size)
    return next((scale for scale in (8, 4, 2) if ratio >= scale), 1)


def _decode(
    file: str | Path | io.BytesIO,
    name: str | Path,
    size: int | None = None,
    min_size: int | None = None,
) -> tuple[Image.Image, tuple[int, int]]:
    """The decoded RGB image and the file's full (width, height)."""
    decoded = _turbo_decode(file, min_size)
    if decoded is not None:
        return Image.fromarray(decoded[0]), decoded[1]
    return _pil_decode(file, name, size, min_size)


def _pil_decode(
    file: str | Path | io.BytesIO,
    name: str | Path,
    size: int | None = None,
    min_size: int | None = None,
) -> tuple[Image.Image, tuple[int, int]]:
    """:func:`_decode` by Pillow."""
    try:
        with _strict_size(), Image.open(file) as img:
            full = img.size
            # Only at a scale of 2 or more: at scale 1, draft would only change how Pillow
            # sets up the decoder, and a file that cannot shrink stays exact.
            if min_size and img.format in _JPEG_FORMATS and draft_scale(full, min_size) > 1:
                img.draft("RGB", (min_size, min_size))
            high_byte = _high_byte_only(img)
            img.load()  # decode now so that truncated files fail here, not later
            _warn_low_bit_depth(img, name, high_byte)
            return to_rgb(img), full
    except ImageReadError as err:  # from to_rgb
        raise ImageReadError(
            f"Cannot read image {str(name)!r}: {err.reason}. {_REENCODE}",
            path=str(name),
            reason=err.reason,
        ) from err
    except _DECODE_ERRORS as err:
        raise read_error(name, err, size) from err


_LOW_BITS = 12  # a 16-bit image whose values fit in this many bits is warned of
_warned_low_bits = False  # once a process: a 12-bit dataset has it in every file


def _high_byte_only(img: Image.Image) -> bool:
    """Whether Pillow decodes the opened (not yet loaded) ``img`` to 8 bits per channel by
    keeping the high byte of each 16-bit value: 16-bit colour and grey-with-alpha PNGs."""
    return img.format == "PNG" and bool(img.tile) and str(img.tile[0].args).endswith(";16B")


def _warn_low_bit_depth(img: Image.Image, name: str | Path, high_byte: bool) -> None:
    """Warn (once) of a 16-bit image whose values all fit in 12 bits (module notes);
    ``high_byte``: Pillow kept only the high byte of the file's values (_high_byte_only)."""
    global _warned_low_bits
    if _warned_low_bits:
        return
    if img.mode.startswith("I;16") or img.mode == "I":
        lo, hi = img.getextrema()
        if lo < 0 or not 0 < hi < 1 << _LOW_BITS:
            return
        seen = f"its values reach only {hi} (range {lo}..{hi})"
    elif high_byte and img.mode in ("RGB", "RGBA", "LA"):
        colour = img.getextrema()[: 1 if img.mode == "LA" else 3]  # alpha aside
        top = max(band[1] for band in colour)  # the high byte of the largest value
        if not 0 < top < 1 << (_LOW_BITS - 8):
            return
        hi = top * 256 + 255
        seen = f"its values stay below {hi + 1}"
    else:
        return
    _warned_low_bits = True
    bits = max(hi.bit_length(), 8)
    warnings.warn(
        f"Image {str(name)!r} is 16-bit but {seen}: 16-bit images are scaled by "
        f"255/65535, so it decodes near-black (at most {round(hi * 255 / 65535)} of 255). If "
        f"it holds {bits}-bit data saved unscaled (a camera or scanner's raw values), rescale "
        f"the files to 16 bits (values << {16 - bits}) or save them as 8-bit. Later such "
        "images are not warned of again.",
        UserWarning,
        stacklevel=2,
    )


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
    key = img.info.get("transparency") if mode not in _ALPHA_MODES else None
    if key is not None and (mode.startswith("I") or mode == "F"):
        # scaled as below (Pillow's RGBA conversion would clip), then the keyed pixels white
        pixels = np.asarray(img)
        rgb = np.repeat(_scale_to_uint8(pixels, mode)[..., None], 3, axis=-1)
        rgb[pixels == key] = _WHITE
        return Image.fromarray(rgb)
    if key is not None:  # P, L, RGB, 1 with a transparency key (PNG tRNS, GIF)
        img, mode = img.convert("RGBA"), "RGBA"
    if mode == "RGB":
        return img
    if mode in _ALPHA_MODES:
        # Pillow converts premultiplied La only to LA (RGBa goes straight to RGBA)
        rgba = (img.convert("LA") if mode == "La" else img).convert("RGBA")
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
