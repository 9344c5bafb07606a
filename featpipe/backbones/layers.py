"""Layer requests ("layer3:avg") and the poolings that turn activations into vectors."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from featpipe.errors import ConfigError

POOLED = "pooled"  # the input of the backbone's classifier: its final pooled features
LOGITS = "logits"  # the backbone's own output
POOLED_COMBINES = ("mean", "cat")  # how pooled puts several modules' inputs together
POOLINGS = ("avg", "max", "avgmax", "grid:k", "cls", "mean", "none")
_GRID = re.compile(r"grid:(\d+)$")
_REQUEST_SEP = re.compile(r"[,\s]+")  # how several requests get written as one string


def _is_str(value: object) -> bool:
    return isinstance(value, str)


def _several(requests: list[str]) -> str:
    """How to ask for several layers, by caller: extract() takes a list, an Embedder one."""
    return (
        f"extract() takes several as a list, layers={requests!r}; an Embedder takes one "
        f"(layer={requests[0]!r}): for several, put one Embedder per layer in a FeatureUnion."
    )


@dataclass(frozen=True)
class LayerSpec:
    """A module name and how to pool its output; ``pooling=None`` picks it from the shape
    (avg for B×C×H×W maps, cls for B×T×C tokens, none for B×D vectors)."""

    module: str
    pooling: str | None = None

    @property
    def name(self) -> str:
        """The name features are stored under: the request as the user wrote it."""
        return self.module if self.pooling is None else f"{self.module}:{self.pooling}"

    @classmethod
    def of(cls, request: str | LayerSpec) -> LayerSpec:
        """A layer request as a spec: a LayerSpec as it is, a string parsed."""
        return request if isinstance(request, LayerSpec) else cls.parse(request)

    @classmethod
    def parse(cls, text: str) -> LayerSpec:
        if not isinstance(text, str):  # a list here meant several layers, or one in brackets
            named = isinstance(text, (list, tuple)) and text and all(map(_is_str, text))
            raise ConfigError(
                f"A layer request is one layer name as a str, e.g. 'pooled' or 'blocks.5:avg'; "
                f"got the {type(text).__name__} {text!r}. "
                + _several(list(text) if named else ["pooled", "blocks.5:avg"])
            )
        text = text.strip()
        parts = [part for part in _REQUEST_SEP.split(text) if part]
        if len(parts) > 1:  # module names hold neither commas nor spaces
            raise ConfigError(
                f"Layer request {text!r} holds {len(parts)} requests. {_several(parts)}"
            )
        module, sep, pooling = text.partition(":")
        if not module:
            raise ConfigError(
                f"Layer request {text!r} has no module name; write e.g. 'layer3:avg'."
            )
        if not sep:
            return cls(module)
        grid = _GRID.match(pooling)
        if grid and int(grid.group(1)) < 1:  # refused here, not after a store is laid out
            raise ConfigError(
                f"Pooling {pooling!r} in layer request {text!r} needs k >= 1; write e.g. "
                f"'{module}:grid:2'."
            )
        if (pooling not in POOLINGS or pooling == "grid:k") and not grid:
            raise ConfigError(
                f"Unknown pooling {pooling!r} in layer request {text!r}. "
                f"Valid poolings: {', '.join(POOLINGS)} (k a positive integer, e.g. grid:2)."
            )
        return cls(module, pooling)


def layer_requests(layers: str | LayerSpec | Sequence[str | LayerSpec]) -> list:
    """One request (``"pooled"``) as a list of one: a string is never a list of its letters."""
    return [layers] if isinstance(layers, (str, LayerSpec)) else list(layers)


def resolve_pooling(pooling: str | None, output: torch.Tensor, tokens: str = "cls") -> str:
    """The pooling actually applied to ``output`` for a request (None picks by shape;
    ``tokens`` is the pick for B×T×C tokens: ``mean`` for models without a class token)."""
    if pooling is not None:
        return pooling
    return {4: "avg", 3: tokens, 2: "none"}.get(output.ndim, "none")


def pool(output: torch.Tensor, pooling: str, layer: str = "") -> torch.Tensor:
    """Reduce a module output to a (B, D) tensor."""
    if isinstance(output, (tuple, list)):
        output = output[0]
    nd = output.ndim
    if pooling == "none":
        return output.flatten(1)
    if pooling in ("avg", "max", "avgmax") or pooling.startswith("grid:"):
        if nd != 4:
            raise ConfigError(
                f"Pooling {pooling!r} needs a B×C×H×W map but layer {layer!r} gives shape "
                f"{tuple(output.shape)}; use {'cls or mean' if nd == 3 else 'none'}."
            )
        if pooling == "avg":
            return output.mean(dim=(2, 3))
        if pooling == "max":
            return output.amax(dim=(2, 3))
        if pooling == "avgmax":
            return torch.cat([output.mean(dim=(2, 3)), output.amax(dim=(2, 3))], dim=1)
        k = int(_GRID.match(pooling).group(1))
        if k < 1:
            raise ConfigError(f"grid pooling needs k >= 1; got {pooling!r}.")
        height, width = output.shape[2:]
        if k > min(height, width):  # cells past the map's size only repeat its values
            raise ConfigError(
                f"Pooling {pooling!r} asks for a {k}×{k} grid of layer {layer!r}, whose map is "
                f"{height}×{width} at this image size; use grid:{min(height, width)} or less, or "
                "none for every position."
            )
        return F.adaptive_avg_pool2d(output, k).flatten(1)
    if pooling in ("cls", "mean"):
        if nd != 3:
            raise ConfigError(
                f"Pooling {pooling!r} needs B×T×C tokens but layer {layer!r} gives shape "
                f"{tuple(output.shape)}; use {'avg, max, avgmax or grid:k' if nd == 4 else 'none'}."
            )
        return output[:, 0] if pooling == "cls" else output.mean(dim=1)
    raise ConfigError(f"Unknown pooling {pooling!r}; valid: {', '.join(POOLINGS)}.")
