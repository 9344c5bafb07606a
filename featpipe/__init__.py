"""featpipe: transfer learning on images with frozen backbones, classical heads and fine-tuning."""

# The Ctrl-C hook goes in before the slow imports (torch takes seconds).
# ruff: noqa: E402

from __future__ import annotations

from featpipe.interrupt import quiet_while_importing as _quiet_while_importing

_imported = _quiet_while_importing()

from featpipe._version import __version__

# `extract` is both a subpackage and its main function: importing the function here, after the
# subpackage, makes `featpipe.extract` the function, as users expect.
from featpipe.backbones import Backbone, get_backbone, list_backbones, register_backbone
from featpipe.data import ArraySource, CSVSource, ImageFolderSource, ImageSource, open_source
from featpipe.errors import FeaturePipeError
from featpipe.extract import extract
from featpipe.extract.embedder import Embedder
from featpipe.store import FeatureStore

__all__ = [
    "ArraySource",
    "Backbone",
    "CSVSource",
    "Embedder",
    "FeaturePipeError",
    "FeatureStore",
    "ImageFolderSource",
    "ImageSource",
    "__version__",
    "extract",
    "get_backbone",
    "list_backbones",
    "open_source",
    "register_backbone",
]

_imported()
del _imported, _quiet_while_importing
