"""Pipeline stages: each plans the jobs of a config and runs one job into a result row.

A stage is a module (or any object) with ``plan(config, data) -> list[Job]`` and
``run(job, context) -> ResultRow``, registered here under its name. The runner runs every
stage's jobs in registration order, skips those already in results.jsonl and writes a row per
job. To add a stage (e.g. zero-shot): write ``stages/zero_shot.py`` with ``plan`` and ``run``,
and register it with ``register_stage("zero_shot", zero_shot)``.

Extraction is not a stage: it writes no row. ``stages.extract.feature_store`` makes a
backbone's store once per run for the stages that read features.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from featpipe.pipeline.jobs import Job, PlanData, RunContext
from featpipe.pipeline.stages import finetune, probe
from featpipe.registry import Registry
from featpipe.report.results import ResultRow


@dataclass(frozen=True)
class Stage:
    name: str
    plan: Callable[..., list[Job]]  # (config, PlanData) -> jobs in run order
    run: Callable[[Job, RunContext], ResultRow]


STAGES: Registry[Stage] = Registry("pipeline stage")


def register_stage(name: str, module, *, replace: bool = False) -> Stage:
    """Register a stage: ``module`` has ``plan(config, data)`` and ``run(job, context)``. A
    taken name raises unless ``replace``."""
    return STAGES.add(name, Stage(name, module.plan, module.run), replace=replace)


def plan_jobs(config, data: PlanData) -> list[Job]:
    """Every job of every stage, in stage order."""
    return [job for stage in STAGES.values() for job in stage.plan(config, data)]


def run_job(job: Job, context: RunContext) -> ResultRow:
    return STAGES.get_or_raise(job.stage).run(job, context)


register_stage(probe.NAME, probe)
register_stage(finetune.NAME, finetune)
