"""Small text helpers for messages and reports. Imports nothing heavy, so heads, data checks
and the report can all use them."""

from __future__ import annotations


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """E.g. "1 method", "3 methods", "1 class": text never says "1 methods" or "1 class(es)"."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def agrees(n: int, one: str, many: str) -> str:
    """The word that agrees with a count: agrees(1, "has", "have") is "has"."""
    return one if n == 1 else many
