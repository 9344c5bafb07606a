"""Extraction: run a frozen backbone over an image source into a resumable feature store."""

from featpipe.extract.datapath import CPUDataPath, DataPath, get_data_path
from featpipe.extract.extractor import ExtractionPlan, extract, plan_extraction, run_extraction
from featpipe.extract.inference import Inference

__all__ = [
    "CPUDataPath",
    "DataPath",
    "ExtractionPlan",
    "Inference",
    "extract",
    "get_data_path",
    "plan_extraction",
    "run_extraction",
]
