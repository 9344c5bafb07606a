"""Preprocessing that travels with the weights: resize, centre crop, normalise."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
from torchvision.transforms import v2 as T
from torchvision.transforms.functional import InterpolationMode

from featpipe.errors import ConfigError

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


@dataclass(frozen=True)
class Preprocessing:
    """Resize the short side to ``resize`` (``crop_mode`` 'squash': both sides, aspect ratio
    not kept), centre-crop ``crop`` x ``crop`` (padded with zeros where ``crop`` > ``resize``,
    as timm's crop_pct > 1 asks), scale to [0, 1], normalise with ``mean``/``std``. Built from
    the weights' own metadata, never retyped."""

    resize: int
    crop: int
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    antialias: bool = True
    crop_mode: str = "center"

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(
                f"Unknown interpolation {self.interpolation!r}; valid: {', '.join(INTERPOLATIONS)}."
            )
        if self.crop_mode not in CROP_MODES:
            raise ConfigError(
                f"Unknown crop mode {self.crop_mode!r}; valid: {', '.join(CROP_MODES)}."
            )
        if self.crop < 1 or self.resize < 1:
            raise ConfigError(
                "Preprocessing needs crop >= 1 and resize >= 1; "
                f"got resize={self.resize}, crop={self.crop}."
            )
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    @property
    def crop_fraction(self) -> float:
        return self.crop / self.resize

    def at_size(self, size: int) -> Preprocessing:
        """The same recipe at another input size, keeping the crop fraction."""
        if size < 8:
            raise ConfigError(f"image size must be at least 8 pixels; got {size}.")
        return replace(self, crop=size, resize=max(1, round(size / self.crop_fraction)))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        if self.crop_mode == "center":  # left out, so that keys made before it stay valid
            del d["crop_mode"]
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
                T.CenterCrop(self.crop),
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
