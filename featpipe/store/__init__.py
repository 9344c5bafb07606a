"""Feature stores: resumable HDF5 files of pooled features (layout in ``schema``)."""

from featpipe.store.key import store_filename, store_key
from featpipe.store.reader import FeatureStore
from featpipe.store.schema import FORMAT, FORMAT_VERSION
from featpipe.store.subset import TrainSubset
from featpipe.store.writer import StoreWriter, write_arrays

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "FeatureStore",
    "StoreWriter",
    "TrainSubset",
    "store_filename",
    "store_key",
    "write_arrays",
]
