"""Run a declared experiment: plan every stage's jobs, run the unfinished ones, write the report.

The whole plan is checked first (see validate.py), so a bad value fails before any compute.
Resumable at two levels: feature stores come from extract's cache (an interrupted extraction
resumes its missing chunks), and a job whose (method, seed, config hash) row is already in
results.jsonl is skipped, so an interrupted run picks up at the first unfinished job.
The run folder's plan.json lists the rows of the current config; reports use only those.
What each job does is its stage's business (``featpipe.pipeline.stages``).
"""

from __future__ import annotations

import json
import os
import platform
import warnings
from collections.abc import Callable
from pathlib import Path

from featpipe.data import ImageSource, open_source, subsample
from featpipe.interrupt import Interrupted
from featpipe.pipeline.config import DEFAULT_FRACTIONS, PipelineConfig, SourceConfig
from featpipe.pipeline.jobs import Job, PlanData, RunContext
from featpipe.pipeline.stages import plan_jobs, run_job
from featpipe.pipeline.validate import check_grids, check_models, check_sizes
from featpipe.provenance import versions
from featpipe.report import (
    RESULTS_FILE,
    PlannedRun,
    RunPlan,
    append_result,
    read_results,
    write_plan,
    write_report,
)
from featpipe.report.results import write_text_atomic


def plan(config: PipelineConfig, source_fingerprint: str, *, cv_selection: bool = False):
    """Every job of a config in run order (see :mod:`featpipe.pipeline.stages`)."""
    return plan_jobs(config, PlanData(source_fingerprint, cv_selection))


def open_pipeline_source(section: SourceConfig) -> ImageSource:
    """The source of a config's [source] table, split and limited as declared.

    A fraction the file leaves out (None) is its default where the source lacks that split,
    and says nothing where the source has it: only a fraction the user set is worth a
    warning that it is ignored."""
    given = {name: getattr(section, name) for name in DEFAULT_FRACTIONS}
    fractions = {
        name: DEFAULT_FRACTIONS[name] if value is None else value for name, value in given.items()
    }
    with warnings.catch_warnings():
        for name, value in given.items():
            if value is None:
                warnings.filterwarnings("ignore", f"{name}=.* is ignored", UserWarning)
        source = open_source(section.data, **fractions, seed=section.split_seed)
    if section.limits:
        source = subsample(source, dict(section.limits), seed=section.split_seed)
    return source


def describe_device(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return f"cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"


class PipelineRunner:
    """Runs one validated config (see :func:`featpipe.pipeline.config.load_config`)."""

    def __init__(
        self,
        config: PipelineConfig,
        *,
        source: ImageSource | None = None,
        progress: bool = True,
        log: Callable[[str], None] = print,
    ):
        self.config = config
        self.source = source
        self.progress = progress
        self.log = log

    def run(self) -> Path:
        """Check the whole plan, run every unfinished job, then write the reports; returns
        the run folder."""
        context, jobs, run_plan = self._prepare()
        results = context.run_dir / RESULTS_FILE
        rows = read_results(results, repair=True)
        done = _keys(rows)
        self.log(
            f"{self.config.name}: {len(jobs)} method runs, "
            f"{len(done & {j.key for j in jobs})} already finished; results in {results}"
        )
        for job in jobs:
            if job.key in done:
                self.log(f"reusing finished {job.label} (seed {job.seed})")
        try:
            for job in (j for j in jobs if j.key not in done):
                row = append_result(results, run_job(job, context).to_json())
                rows.append(row)  # recorded at once: an interruption loses only the running job
                self.log(
                    f"{job.label}, seed {job.seed}: top-1 {100 * row['metrics']['top1']:.1f} % "
                    f"(fit {row['cost']['fit_seconds']:.1f} s)"
                )
            write_report(context.run_dir, rows, run_plan, source=self.source)
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: finished rows are on disk
            finished = len(_keys(rows) & {j.key for j in jobs})
            raise _interrupted(exc, finished, len(jobs)) from None
        self.log(f"report: {context.run_dir / 'report.md'} and {context.run_dir / 'report.html'}")
        return context.run_dir

    def _prepare(self) -> tuple[RunContext, list[Job], RunPlan]:
        """Check everything that can be checked before compute, then plan the run and save
        the plan beside its config; nothing is written unless the checks pass."""
        from featpipe.device import resolve_device

        cfg = self.config
        check_grids(cfg)  # before the source is even opened: the cheapest checks first
        device = str(resolve_device(cfg.device))
        if self.source is None:
            self.source = open_pipeline_source(cfg.source)
        check_sizes(cfg, self.source)
        check_models(cfg)
        fingerprint = self.source.fingerprint(content=cfg.source.hash_contents)
        jobs = plan(cfg, fingerprint, cv_selection=len(self.source.indices("val")) == 0)
        run_plan = RunPlan(
            cfg.name,
            [PlannedRun(j.method, j.seed, j.config_hash, j.label, j.deterministic) for j in jobs],
            n_boot=cfg.n_boot,
            source_fingerprint=fingerprint,
        )
        context = RunContext(
            run=cfg.name,
            n_boot=cfg.n_boot,
            provenance={
                "source": {"description": self.source.describe(), "fingerprint": fingerprint},
                "versions": versions(),
                "device": describe_device(device),
            },
            config=cfg,
            source=self.source,
            device=device,
            run_dir=Path(cfg.out),
            progress=self.progress,
            log=self.log,
        )
        context.run_dir.mkdir(parents=True, exist_ok=True)
        config_json = json.dumps(cfg.to_json(), indent=2) + "\n"
        write_text_atomic(context.run_dir / "config.json", config_json)
        write_plan(context.run_dir, run_plan)
        return context, jobs, run_plan


def _keys(rows: list[dict]) -> set[tuple[str, int, str]]:
    return {(r["method"], r["seed"], r["config_hash"]) for r in rows}


def _interrupted(exc: KeyboardInterrupt, done: int, total: int) -> Interrupted:
    """The interruption told with how many method runs are done (and what the interrupted
    step said about its own state, e.g. extraction's chunks)."""
    stop = Interrupted.from_exception(exc)
    inner = stop.message.removeprefix("interrupted").strip(" :;")
    inner = inner.removesuffix("run the same command to resume").strip(" ;")
    detail = f" ({inner})" if inner else ""
    return stop.with_message(
        f"interrupted: {done} of {total} method runs done{detail}; run the same command to resume"
    )


def run_pipeline(
    config: PipelineConfig,
    *,
    source: ImageSource | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Run a validated pipeline config (``source`` replaces its [source] table, e.g. for
    in-memory arrays); returns the run folder with results.jsonl, report.md and report.html."""
    return PipelineRunner(config, source=source, progress=progress, log=log).run()
