"""Image sources: folders, CSV manifests, arrays, built-ins, torchvision and Hugging Face
datasets on disk, parquet, WebDataset shards, with seeded splits."""

from featpipe.data.arrays import ArraySource
from featpipe.data.builtin import (
    BUILTIN_SOURCES,
    list_builtin_sources,
    load_builtin,
    register_builtin_source,
)
from featpipe.data.folder import IMAGE_EXTENSIONS, ImageFolderSource
from featpipe.data.images import load_rgb, to_rgb
from featpipe.data.manifest import CSVSource
from featpipe.data.resolve import open_source
from featpipe.data.shards import WebDatasetSource
from featpipe.data.source import SPLIT_CODES, SPLIT_NAMES, ImageSource, SubsetSource
from featpipe.data.splits import (
    nested_subsets,
    stratified_split,
    subsample,
    train_subset,
    with_train_ids,
)
from featpipe.data.tables import HFDatasetSource, ParquetSource
from featpipe.data.torchvision_sources import TorchvisionSource

__all__ = [
    "BUILTIN_SOURCES",
    "IMAGE_EXTENSIONS",
    "SPLIT_CODES",
    "SPLIT_NAMES",
    "ArraySource",
    "CSVSource",
    "HFDatasetSource",
    "ImageFolderSource",
    "ImageSource",
    "ParquetSource",
    "SubsetSource",
    "TorchvisionSource",
    "WebDatasetSource",
    "list_builtin_sources",
    "load_builtin",
    "load_rgb",
    "nested_subsets",
    "open_source",
    "register_builtin_source",
    "stratified_split",
    "subsample",
    "to_rgb",
    "train_subset",
    "with_train_ids",
]
