"""Extraction: run a frozen backbone over an image source into a resumable feature store."""

from featpipe.extract.datapath import CPUDataPath, DataPath, get_data_path
from featpipe.extract.extractor import extract

__all__ = ["CPUDataPath", "DataPath", "extract", "get_data_path"]
