"""Checks of plain parameter values shared by heads and metrics (one rule for each)."""

from __future__ import annotations

import numbers


def is_count(value: object) -> bool:
    """Whether ``value`` is a whole number >= 1 (3 or 3.0; not True, 2.5 or '3'): int() cut
    2.5 to 2 and read True as 1, and raised a bare ValueError on 'abc'. An int is whole
    without float(), which overflows past 1e308."""
    return (
        not isinstance(value, bool)
        and isinstance(value, numbers.Real)
        and (isinstance(value, numbers.Integral) or float(value).is_integer())
        and value >= 1
    )
