"""Backbone registry and spec strings: ``[torchvision:|timm:]name[@weights]``.

Built-in names (``efficientnet_lite0``) are registered with :func:`register_backbone`;
``torchvision:`` and ``timm:`` specs are resolved by those libraries' own model lists.
``weights`` is a torchvision enum name, ``DEFAULT``, ``none``, or a path to a local
state-dict file (loaded with ``weights_only=True``).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

from featpipe.backbones.base import Backbone
from featpipe.errors import ConfigError, unknown_name
from featpipe.registry import Registry

BackboneFactory = Callable[["BackboneSpec"], Backbone]
_BUILTINS: Registry[BackboneFactory] = Registry("backbone")
# family name -> (build one model, list all model names)
_FAMILIES: Registry[tuple[BackboneFactory, Callable[[], list[str]]]] = Registry("backbone family")


@dataclass(frozen=True)
class BackboneSpec:
    """A parsed spec: ``family`` is 'builtin', 'torchvision' or 'timm'."""

    family: str
    name: str
    weights: str | None = None

    @classmethod
    def parse(cls, text: str) -> BackboneSpec:
        text = text.strip()
        if not text:
            raise ConfigError(
                "Empty backbone spec; try 'efficientnet_lite0' or `featpipe backbones`."
            )
        head, _, weights = text.partition("@")
        family, sep, name = head.partition(":")
        if not sep:
            family, name = "builtin", head
        if family not in list_families():
            raise unknown_name(
                "backbone family",
                family,
                list_families(),
                hint="Write e.g. 'torchvision:resnet18@none' or 'timm:resnet18@none'.",
            )
        return cls(family, name, weights or None)

    def __str__(self) -> str:
        head = self.name if self.family == "builtin" else f"{self.family}:{self.name}"
        return head if self.weights is None else f"{head}@{self.weights}"


def register_backbone(
    name: str, *, replace: bool = False
) -> Callable[[BackboneFactory], BackboneFactory]:
    """Register a built-in backbone factory under ``name``; a taken name raises unless
    ``replace``."""
    return _BUILTINS.decorator(name, replace=replace)


def unregister_backbone(name: str) -> None:
    _BUILTINS.remove(name)


def register_family(
    family: str,
    factory: BackboneFactory,
    names: Callable[[], list[str]],
    *,
    replace: bool = False,
) -> None:
    """Register a model library (``torchvision``, ``timm``): how to build one and list all.
    A taken family name raises unless ``replace``."""
    _FAMILIES.add(family, (factory, names), replace=replace)


def list_families() -> list[str]:
    """Backbone families that specs may name: ``builtin`` and each registered library."""
    return ["builtin", *sorted(_FAMILIES)]


def list_backbones(filter: str | None = None, family: str | None = None) -> list[str]:
    """Sorted backbone names, built-ins first; ``filter`` keeps names containing it."""
    out = [] if family not in (None, "builtin") else sorted(_BUILTINS)
    for fam, (_, names) in sorted(_FAMILIES.items()):
        if family in (None, fam):
            out += [f"{fam}:{n}" for n in sorted(names())]
    if filter:
        out = [n for n in out if filter.lower() in n.lower()]
    return out


def get_backbone(spec: str | BackboneSpec, image_size: int | None = None) -> Backbone:
    """Build a backbone from its spec, in eval mode, with its own preprocessing
    (optionally at another input size)."""
    parsed = spec if isinstance(spec, BackboneSpec) else BackboneSpec.parse(spec)
    if parsed.family == "builtin":
        if parsed.name not in _BUILTINS:
            close = [
                f"{fam}:{n}"
                for fam, (_, names) in sorted(_FAMILIES.items())
                for n in difflib.get_close_matches(parsed.name, names(), n=3, cutoff=0.75)
            ]
            hint = f"Close library models: {', '.join(map(repr, close))}. " if close else ""
            raise unknown_name(
                "backbone",
                parsed.name,
                list(_BUILTINS),
                hint=hint + "See `featpipe backbones`; torchvision and timm models need a "
                "'torchvision:' or 'timm:' prefix.",
            )
        backbone = _BUILTINS[parsed.name](parsed)
    else:
        factory, names = _FAMILIES[parsed.family]
        valid = names()
        if parsed.name not in valid:
            raise unknown_name(
                f"{parsed.family} model",
                parsed.name,
                valid,
                hint=f"See `featpipe backbones --family {parsed.family}`.",
            )
        backbone = factory(parsed)
    return backbone.at_size(image_size)
