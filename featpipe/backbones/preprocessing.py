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


@dataclass(frozen=True)
class Preprocessing:
    """Resize the short side to ``resize``, centre-crop ``crop`` x ``crop``, scale to [0, 1],
    normalise with ``mean``/``std``. Built from the weights' own metadata, never retyped."""

    resize: int
    crop: int
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    antialias: bool = True

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(
                f"Unknown interpolation {self.interpolation!r}; valid: {', '.join(INTERPOLATIONS)}."
            )
        if self.crop < 1 or self.resize < self.crop:
            raise ConfigError(
                "Preprocessing needs 1 <= crop <= resize; "
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
        return replace(self, crop=size, resize=max(size, round(size / self.crop_fraction)))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        return cls(**{**d, "mean": tuple(d["mean"]), "std": tuple(d["std"])})

    def geometry(self) -> T.Compose:
        """PIL or uint8 tensor in, resized and cropped image out (no dtype change)."""
        return T.Compose(
            [
                T.Resize(self.resize, INTERPOLATIONS[self.interpolation], antialias=self.antialias),
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
