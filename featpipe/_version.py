"""featpipe's own version, in a module that imports nothing of the package (so that any module
may import it without importing the package root)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("featpipe")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
