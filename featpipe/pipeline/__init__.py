"""Declared experiments (``pipelines/*.toml``): config schema and the runner."""

from featpipe.pipeline.config import FINETUNE_KEYS, SCHEMA, config_from_dict, load_config
from featpipe.pipeline.runner import PipelineRunner, open_pipeline_source, plan, run_pipeline

__all__ = [
    "FINETUNE_KEYS",
    "SCHEMA",
    "PipelineRunner",
    "config_from_dict",
    "load_config",
    "open_pipeline_source",
    "plan",
    "run_pipeline",
]
