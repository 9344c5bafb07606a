"""Declared experiments (``pipelines/*.toml``): typed config, stages and the runner."""

from featpipe.pipeline.config import (
    PipelineConfig,
    config_from_dict,
    load_config,
    pipeline_schema,
)
from featpipe.pipeline.runner import PipelineRunner, open_pipeline_source, plan, run_pipeline

__all__ = [
    "PipelineConfig",
    "PipelineRunner",
    "config_from_dict",
    "load_config",
    "open_pipeline_source",
    "pipeline_schema",
    "plan",
    "run_pipeline",
]
