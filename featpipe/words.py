"""Small text helpers for messages and reports. Imports nothing heavy, so heads, data checks
and the report can all use them."""

from __future__ import annotations

from collections.abc import Iterable, Sized
from itertools import islice


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """E.g. "1 method", "3 methods", "1 class": text never says "1 methods" or "1 class(es)"."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def agrees(n: int, one: str, many: str) -> str:
    """The word that agrees with a count: agrees(1, "has", "have") is "has"."""
    return one if n == 1 else many


def listed(
    items: Iterable[object],
    shown: int = 3,
    *,
    sep: str = ", ",
    noun: str | None = None,
    total: int | None = None,
) -> str:
    """The first ``shown`` items and how many others: "a, b, c and 1,204 more", or with
    ``noun`` "and 1 more label" / "and 4 more labels". The one form every message uses, so a
    long list reads the same everywhere. ``total`` is the count when ``items`` is lazy (only
    the shown ones are then formatted) or holds only the first ones."""
    if total is None:
        items = items if isinstance(items, Sized) else list(items)
        total = len(items)
    first = [str(item) for item in islice(items, shown)]
    rest = total - len(first)
    if rest <= 0:
        return sep.join(first)
    more = f"{rest:,} more" + (f" {agrees(rest, noun, noun + 's')}" if noun else "")
    return f"{sep.join(first)} and {more}" if first else more
