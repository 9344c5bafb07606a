"""Backbone registry and spec strings: ``[family:]name[@weights]``.

Built-in names (``efficientnet_lite0``) are registered with :func:`register_backbone`;
library families (``torchvision:``, ``timm:``, ``hf:``, ``open_clip:``) with
:func:`register_family`. ``weights`` is family-specific: an enum name, ``pretrained``, a tag,
``none``, or a path to a local weights file.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

from featpipe.backbones.base import Backbone
from featpipe.errors import ConfigError, MissingExtraError, unknown_name
from featpipe.extras import has_extra, pip_line
from featpipe.registry import Registry

BackboneFactory = Callable[["BackboneSpec"], Backbone]
_BUILTINS: Registry[BackboneFactory] = Registry("backbone")


@dataclass(frozen=True)
class Family:
    """A model library: how to build one of its models and list their names.

    ``open_names``: ``names()`` lists the known ones (a cache's content) and the factory also
    takes others (local paths), so the registry does not refuse unlisted names. ``extra``: the
    pip extra that installs the library; without it the family lists nothing and building
    raises the error that names the extra."""

    build: BackboneFactory
    names: Callable[[], list[str]]
    open_names: bool = False
    extra: str | None = None

    def available(self) -> bool:
        return self.extra is None or has_extra(self.extra)

    def known_names(self) -> list[str]:
        return self.names() if self.available() else []


_FAMILIES: Registry[Family] = Registry("backbone family")


@dataclass(frozen=True)
class BackboneSpec:
    """A parsed spec: ``family`` is 'builtin' or a registered library ('torchvision', ...)."""

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
    open_names: bool = False,
    extra: str | None = None,
) -> None:
    """Register a model library (``torchvision``, ``timm``): how to build one and list all
    (see :class:`Family` for ``open_names`` and ``extra``). A taken family name raises
    unless ``replace``."""
    _FAMILIES.add(family, Family(factory, names, open_names, extra), replace=replace)


def get_family(family: str) -> Family:
    return _FAMILIES.get_or_raise(family)


def list_families() -> list[str]:
    """Backbone families that specs may name: ``builtin`` and each registered library."""
    return ["builtin", *sorted(_FAMILIES)]


def list_backbones(filter: str | None = None, family: str | None = None) -> list[str]:
    """Sorted backbone names, built-ins first; ``filter`` keeps names containing it."""
    out = [] if family not in (None, "builtin") else sorted(_BUILTINS)
    for fam, entry in sorted(_FAMILIES.items()):
        if family in (None, fam):
            out += [f"{fam}:{n}" for n in sorted(entry.known_names())]
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
                for fam, entry in sorted(_FAMILIES.items())
                if not entry.open_names
                for n in difflib.get_close_matches(
                    parsed.name, entry.known_names(), n=3, cutoff=0.75
                )
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
        entry = _FAMILIES[parsed.family]
        if not entry.available():
            raise MissingExtraError(
                f"Backbone {str(parsed)!r} needs the '{entry.extra}' extra, which is not "
                f"installed. Install it with: {pip_line(entry.extra)}"
            )
        valid = entry.names()
        if not entry.open_names and parsed.name not in valid:
            raise unknown_name(
                f"{parsed.family} model",
                parsed.name,
                valid,
                hint=f"See `featpipe backbones --family {parsed.family}`.",
            )
        backbone = entry.build(parsed)
    if not isinstance(backbone, Backbone):
        raise ConfigError(
            f"The factory registered for backbone {str(parsed)!r} returned "
            f"{type(backbone).__name__}, not a featpipe Backbone. Make it return "
            "Backbone(spec=str(spec), model=..., preprocessing=Preprocessing(...)) around the "
            "model (see register_backbone)."
        )
    return backbone.at_size(image_size)
