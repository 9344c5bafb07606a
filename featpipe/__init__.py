"""featpipe: transfer learning on images with frozen backbones, classical heads and fine-tuning."""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("featpipe")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

# Public names, imported on first use so that `import featpipe` stays cheap.
_EXPORTS = {
    "FeaturePipeError": "featpipe.errors",
    "ImageSource": "featpipe.data",
    "ImageFolderSource": "featpipe.data",
    "CSVSource": "featpipe.data",
    "ArraySource": "featpipe.data",
    "open_source": "featpipe.data",
    "Backbone": "featpipe.backbones",
    "get_backbone": "featpipe.backbones",
    "list_backbones": "featpipe.backbones",
    "register_backbone": "featpipe.backbones",
    "FeatureStore": "featpipe.store",
    "extract": "featpipe.extract",
    "Embedder": "featpipe.heads",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'featpipe' has no attribute {name!r}")
