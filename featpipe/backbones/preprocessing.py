"""Preprocessing that travels with the weights: resize, centre crop, normalise."""

from __future__ import annotations

import math
import operator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torchvision.transforms import v2 as T
from torchvision.transforms.functional import InterpolationMode
from torchvision.transforms.v2 import functional as F

from featpipe.errors import ConfigError

# Larger inputs take gigabytes per image in the first layers (100,000 px asked for a
# 120 GB input tensor and failed with an allocator traceback).
MAX_IMAGE_SIZE = 4096
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
}
# How the image is resized before the centre crop: ``center`` keeps the aspect ratio (the short
# side becomes ``resize``); ``squash`` resizes both sides to ``resize`` (timm's ``crop_mode``
# 'squash', open_clip's ``resize_mode`` 'squash', image processors that resize to height×width).
CROP_MODES = ("center", "squash")
# Where the centre crop starts when the margin (resized size - crop) is odd: ``round`` at
# round((W - crop) / 2), half to even, as torchvision's center_crop (torchvision weights, timm,
# open_clip) does; ``floor`` at (W - crop) // 2, as transformers' image processors do (CLIP,
# DINOv2/Bit, ConvNeXt). The two differ by a pixel when the margin is 3 modulo 4.
CROP_OFFSETS = ("round", "floor")


@dataclass(frozen=True)
class Preprocessing:
    """Resize the short side to ``resize`` (``crop_mode`` 'squash': both sides, aspect ratio
    not kept), centre-crop ``crop`` x ``crop`` (padded with zeros where ``crop`` > ``resize``,
    as timm's crop_pct > 1 asks), scale to [0, 1], normalise with ``mean``/``std``. Built from
    the weights' own metadata, never retyped. ``crop_offset`` rounds the crop's corner as
    torchvision does (``round``) or as transformers' processors do (``floor``). ``crop_pct``
    (timm's) makes :meth:`at_size` resize as timm does at any input size."""

    resize: int
    crop: int
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    antialias: bool = True
    crop_mode: str = "center"
    crop_offset: str = "round"
    # Not in the identity (the resize it gives is) nor in equality: at_size's rule only.
    crop_pct: float | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(
                f"Unknown interpolation {self.interpolation!r}; valid: {', '.join(INTERPOLATIONS)}."
            )
        if self.crop_mode not in CROP_MODES:
            raise ConfigError(
                f"Unknown crop mode {self.crop_mode!r}; valid: {', '.join(CROP_MODES)}."
            )
        if self.crop_offset not in CROP_OFFSETS:
            raise ConfigError(
                f"Unknown crop offset {self.crop_offset!r}; valid: {', '.join(CROP_OFFSETS)}."
            )
        if self.crop < 1 or self.resize < 1:
            raise ConfigError(
                "Preprocessing needs crop >= 1 and resize >= 1; "
                f"got resize={self.resize}, crop={self.crop}."
            )
        object.__setattr__(self, "mean", _per_channel("mean", self.mean))
        object.__setattr__(self, "std", _per_channel("std", self.std))
        if min(self.std) <= 0:  # torchvision refuses 0 at the first image; < 0 flips signs
            raise ConfigError(
                f"Preprocessing std must be positive for each channel; got {self.std}. "
                "Use the std the weights were trained with, e.g. (0.229, 0.224, 0.225)."
            )

    @property
    def crop_fraction(self) -> float:
        return self.crop / self.resize

    def at_size(self, size: int) -> Preprocessing:
        """The same recipe at another input size, keeping the crop fraction."""
        try:  # a whole number as a Python int: 64.0 or numpy's 64 would change the key
            size = operator.index(size)
        except TypeError:
            raise ConfigError(
                f"image size must be a whole number of pixels; got {size!r} "
                f"({type(size).__name__}). Write e.g. 224."
            ) from None
        if not 8 <= size <= MAX_IMAGE_SIZE:
            raise ConfigError(
                f"image size must be from 8 to {MAX_IMAGE_SIZE} pixels; got {size}. Omit it "
                "to use the size the weights were trained at."
            )
        if self.crop_pct:  # timm's floor(size / crop_pct): round() of the kept fraction was
            resize = math.floor(size / self.crop_pct)  # a pixel off in 3 of 10 configs
        else:
            resize = round(size / self.crop_fraction)
        return replace(self, crop=size, resize=max(1, resize))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        del d["crop_pct"]
        # left out at their defaults, so that keys made before they existed stay valid
        if self.crop_mode == "center":
            del d["crop_mode"]
        if self.crop_offset == "round":
            del d["crop_offset"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        return cls(**{**d, "mean": tuple(d["mean"]), "std": tuple(d["std"])})

    @property
    def resize_size(self) -> list[int]:
        """The ``size`` argument of torchvision's resize: ``[short side]`` or ``[h, w]``."""
        return [self.resize] if self.crop_mode == "center" else [self.resize, self.resize]

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) of a ``height`` x ``width`` image after the resize, as torchvision
        computes it."""
        if self.crop_mode == "squash":
            return self.resize, self.resize
        if height <= width:
            return self.resize, int(self.resize * width / height)
        return int(self.resize * height / width), self.resize

    def geometry(self) -> T.Compose:
        """PIL or uint8 tensor in, resized and cropped image out (no dtype change)."""
        interpolation = INTERPOLATIONS[self.interpolation]
        return T.Compose(
            [
                T.Resize(self.resize_size, interpolation, antialias=self.antialias),
                CenterCrop(self.crop, self.crop_offset),
            ]
        )

    def transform(self) -> T.Compose:
        """PIL RGB image in, normalised float32 CHW tensor out."""
        return T.Compose(
            [
                T.ToImage(),
                self.geometry(),
                T.ToDtype(torch.float32, scale=True),
                T.Normalize(self.mean, self.std),
            ]
        )


def _per_channel(name: str, values: Any) -> tuple[float, float, float]:
    """``values`` as three finite floats, one per RGB channel (featpipe feeds RGB images):
    one value for all three would be another store key for the same features."""
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3 or not all(math.isfinite(v) for v in out):
        raise ConfigError(
            f"Preprocessing {name} needs three finite numbers, one per RGB channel; got "
            f"{values!r}. Write e.g. {name}=(0.5, 0.5, 0.5) for one value for every channel."
        )
    return out  # type: ignore[return-value]


def center_crop(image: Any, size: int, offset: str = "round") -> Any:
    """Crop the centre ``size`` x ``size`` of a PIL image or (..., H, W) tensor, padded with
    zeros where it is smaller, as torchvision's ``center_crop`` does; ``offset='floor'`` puts
    the corner at ``(H - size) // 2``, ``(W - size) // 2`` (transformers' ``center_crop``)
    instead of rounding half to even."""
    if offset == "round":
        return F.center_crop(image, [size])
    if offset != "floor":
        raise ConfigError(f"Unknown crop offset {offset!r}; valid: {', '.join(CROP_OFFSETS)}.")
    height, width = F.get_size(image)
    if size > height or size > width:  # torchvision's zero padding (no crop where equal)
        image = F.center_crop(image, [max(size, height), max(size, width)])
        height, width = F.get_size(image)
    return F.crop(image, (height - size) // 2, (width - size) // 2, size, size)


class CenterCrop(T.Transform):
    """``T.CenterCrop`` with the crop's corner rounded as ``offset`` says (:func:`center_crop`):
    one transform for both roundings, the one the tensor path calls too."""

    def __init__(self, size: int, offset: str = "round"):
        super().__init__()
        self.size, self.offset = int(size), offset

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return center_crop(inpt, self.size, self.offset)

    def extra_repr(self) -> str:
        return f"size={self.size}, offset={self.offset}"
