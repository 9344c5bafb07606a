"""Optional libraries: import one, or fail naming the pip extra that installs it."""

from __future__ import annotations

import importlib
from types import ModuleType

from featpipe.errors import MissingExtraError


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """``import module``, or raise MissingExtraError saying that ``purpose`` needs
    ``pip install "featpipe[extra]"``."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(
            f"{purpose} needs the {module.split('.')[0]!r} package, which is not installed "
            f'({err}). Install it with: pip install "featpipe[{extra}]"'
        ) from None
