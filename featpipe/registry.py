"""The one registry type behind backbones, backbone families, heads and built-in datasets.

A registry maps names to entries. Registering a name that is taken raises unless the caller
asks to ``replace`` it, so two plug-ins can never shadow each other by accident.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

from featpipe.errors import ConfigError, unknown_name

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """Named entries of one ``kind`` ("backbone", "head", ...); read like a dict."""

    def __init__(self, kind: str, hint: str = "") -> None:
        self.kind = kind
        self.hint = hint  # appended to "unknown name" errors, e.g. where to list the names
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T, *, replace: bool = False) -> T:
        """Register ``entry`` under ``name``; a taken name raises unless ``replace``."""
        if name in self._entries and not replace:
            raise ConfigError(
                f"A {self.kind} named {name!r} is already registered; pass replace=True "
                "to replace it, or choose another name."
            )
        self._entries[name] = entry
        return entry

    def decorator(self, name: str, *, replace: bool = False) -> Callable[[T], T]:
        """``@registry.decorator("name")`` registers the decorated object."""

        def deco(entry: T) -> T:
            return self.add(name, entry, replace=replace)

        return deco

    def remove(self, name: str) -> None:
        self._entries.pop(name, None)

    def get_or_raise(self, name: str, hint: str | None = None) -> T:
        """The entry for ``name``, or the standard "unknown name" error with close matches."""
        if name not in self._entries:
            hint = self.hint if hint is None else hint
            raise unknown_name(self.kind, name, self._entries, hint=hint)
        return self._entries[name]

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {sorted(self._entries)})"
