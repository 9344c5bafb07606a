"""Run a declared experiment: plan every stage's jobs, run the unfinished ones, write the report.

The whole plan is checked first (see validate.py), so a bad value fails before any compute.
Resumable at two levels: feature stores come from extract's cache (an interrupted extraction
resumes its missing chunks), and a job whose (method, seed, config hash) row is already in
results.jsonl is skipped, so an interrupted run picks up at the first unfinished job. Config
hashes leave out the backbone's identity (weights sha256, preprocessing, pooling), which may
change under the same spec (a weights file rewritten, a featpipe release fixing a model's
preprocessing): such a row is reused only if it records the backbone's identity of today. They
also leave out how a probe's features were computed (precision and decode path, which the device
decides): its row is reused only on features computed as the run computes them now.
The run folder's plan.json lists the rows of the current config; reports use only those.
What each job does is its stage's business (``featpipe.pipeline.stages``).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import warnings
from collections.abc import Callable
from pathlib import Path

from featpipe.atomic import write_text_atomic
from featpipe.data import ImageSource, open_source, subsample
from featpipe.distributed.exchange import job_store, publish, receive
from featpipe.distributed.ranks import alone, channel, current_ranks, process_group
from featpipe.errors import ConfigError, FeaturePipeError
from featpipe.extract.loop import compute_words
from featpipe.interrupt import Interrupted
from featpipe.pipeline.config import DEFAULT_FRACTIONS, PipelineConfig, SourceConfig
from featpipe.pipeline.jobs import Job, PlanData, RunContext, backbone_identity
from featpipe.pipeline.stages import finetune as finetune_stage
from featpipe.pipeline.stages import plan_jobs, run_job
from featpipe.pipeline.stages.extract import feature_store, planned_store
from featpipe.pipeline.validate import (
    check_cache_dir,
    check_folders_outside_images,
    check_grids,
    check_models,
    check_sizes,
    finetune_rows,
)
from featpipe.provenance import versions
from featpipe.report import (
    PLOTS_DIR,
    REPORT_HTML,
    REPORT_MD,
    RESULTS_FILE,
    PlannedRun,
    RunPlan,
    append_result,
    check_run_folder,
    read_results,
    write_plan,
    write_report,
)
from featpipe.report.runplan import identity_hash, left_out, read_plan, recorded_compute
from featpipe.store.lock import StoreLock
from featpipe.words import agrees, counted

CONFIG_FILE = "config.json"  # the run's config, as run (beside plan.json)
# API settings a library message names (on_error="skip", cache_dir (CLI: --cache-dir)), by
# the pipeline key that sets each. Only names one key sets: workers, batch_size and
# image_size are keys of [features] and [finetune], layers of [features] and [probes], and a
# message does not say which table it is about, so those stay in the API's words.
FILE_KEYS = {
    "on_error": "features.on_error",
    "dtype": "features.dtype",
    "cache_dir": "features.cache_dir",
    "val_fraction": "source.val_fraction",
    "sync_bn": "finetune.sync_bn",
}
# The command line's aside after a setting (CLI: --dtype float32), or after its "; ": a
# pipeline has no flags.
_CLI_ASIDE = r"(?: \(CLI: [^()]*\)|; CLI: [^()]*(?=\)))?"
# name="v" or name=V (a full stop after it ends the sentence, as featpipe.cli reads it), or
# the name alone before its flag: name (CLI: --flag).
_SETTING = re.compile(
    rf"(?<![\w.-])({'|'.join(FILE_KEYS)})"
    rf'(?:=("?)([\w-]+(?:\.[\w-]+)*)\2(?![\w"])|(?= \(CLI: )){_CLI_ASIDE}'
)
# A pipeline has no overwrite setting: what replaces its store is deleting it first.
_OVERWRITE = re.compile(rf"(?<![\w.-])with overwrite=True(?!\w){_CLI_ASIDE}")


def plan(
    config: PipelineConfig,
    source_fingerprint: str,
    *,
    cv_selection: bool = False,
    backbones: dict | None = None,
):
    """Every job of a config in run order (see :mod:`featpipe.pipeline.stages`).
    ``backbones``: those the checks built, by spec (labels say what they found in them)."""
    return plan_jobs(config, PlanData(source_fingerprint, cv_selection, backbones or {}))


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
        # The n_boot of the run folder's earlier run, read before this run rewrites its plan
        # (see _earlier_n_boots); none until then.
        self.earlier_n_boots: set[int] = set()

    def run(self) -> Path:
        """Check the whole plan, run every unfinished job, then write the reports; returns
        the run folder. Under torchrun see :meth:`_run_ranks`."""
        ranks = current_ranks()
        try:
            with contextlib.ExitStack() as held:  # the run folder's lock, from _prepare on
                if ranks.distributed:
                    return self._run_ranks(ranks, held)
                context, jobs, run_plan, rows = self._prepare(held=held)
                todo = self._announce(context, jobs, rows, run_plan)
                return self._run_jobs(context, jobs, run_plan, rows, todo)
        except FeaturePipeError as exc:
            if (said := in_file_words(str(exc))) != str(exc):
                exc.args = (said,)  # the same error, its type and fields kept
            raise

    def _announce(
        self, context: RunContext, jobs: list[Job], rows: list[dict], run_plan: RunPlan
    ) -> list[Job]:
        """Say what is finished, and which rows are not reused and why (another version of
        their backbone made them, ...); returns the jobs still to run."""
        results = context.run_dir / RESULTS_FILE
        missing = {m.key: m for m in run_plan.select(rows)[1]}
        self.log(
            f"{self.config.name}: {counted(len(jobs), 'method run')}, "
            f"{len(jobs) - len(missing)} already finished; results in {results}"
        )
        for line in _n_boot_refits(jobs, rows, set(missing), self.earlier_n_boots):
            self.log(line)
        by_key = {(r["method"], r["seed"], r["config_hash"]): r for r in rows}
        for job in jobs:
            if job.key not in missing:
                self.log(f"reusing finished {job.label} (seed {job.seed})")
            elif job.key in by_key:
                why = _made_otherwise(
                    by_key[job.key], job, backbone_identity(context, job), missing[job.key]
                )
                self.log(
                    f"recomputing {job.label} (seed {job.seed}): its row was made {why}; "
                    f"that row stays in {results.name} as history"
                )
        return [j for j in jobs if j.key in missing]

    def _run_jobs(
        self,
        context: RunContext,
        jobs: list[Job],
        run_plan: RunPlan,
        rows: list[dict],
        todo: list[Job],
        *,
        write: bool = True,
        report: bool = True,
    ) -> Path:
        """Run ``todo`` in order, appending each row to results.jsonl (only when ``write``:
        not on torchrun's other ranks), then write the report (when ``report``)."""
        results = context.run_dir / RESULTS_FILE
        try:
            for job in todo:
                row = run_job(job, context).to_json()
                if not write:
                    continue
                row = append_result(results, row)
                rows.append(row)  # recorded at once: an interruption loses only the running job
                self.log(
                    f"{job.label}, seed {job.seed}: top-1 {100 * row['metrics']['top1']:.1f} % "
                    f"(fit {row['cost']['fit_seconds']:.1f} s)"
                )
            if report:
                write_report(context.run_dir, rows, run_plan, source=self.source)
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: finished rows are on disk
            raise _interrupted(exc, _finished(run_plan, rows), len(jobs)) from None
        if report:
            self.log(
                f"report: {context.run_dir / 'report.md'} and {context.run_dir / 'report.html'}"
            )
        return context.run_dir

    def _run_ranks(self, ranks, held: contextlib.ExitStack) -> Path:
        """The run as one rank of a torchrun job. Rank 0 plans (it alone fingerprints the
        source) and publishes the fingerprint and the jobs to run; then every rank fills
        its share of each feature store and runs each fine-tune (DDP), before rank 0 alone
        runs the probes and writes results.jsonl and the report: no rank waits long at a
        collective while rank 0 fits heads. Other ranks return once their share is done."""
        from featpipe.device import resolve_device

        device = resolve_device(self.config.device)
        main = ranks.is_main
        if not main:
            self.log = _quiet  # rank 0 says how the run goes
        with job_store(device) as kv:
            key = f"{channel('run', ranks.restart)}/plan"  # a second run: keys of its own
            if main:
                try:
                    context, jobs, run_plan, rows = self._prepare(held=held)
                    todo = self._announce(context, jobs, rows, run_plan)
                except BaseException as exc:
                    publish(kv, key, {"error": str(exc) or type(exc).__name__})
                    raise
                fingerprint = context.provenance["source"]["fingerprint"]
                publish(kv, key, {"fingerprint": fingerprint, "todo": [j.key for j in todo]})
            else:
                message = receive(kv, key)
                if "error" in message:
                    raise FeaturePipeError(f"rank 0 could not plan the run: {message['error']}")
                context, jobs, run_plan, _ = self._prepare(message["fingerprint"], write=False)
                todo_keys = set(message["todo"])
                if unplanned := todo_keys - {j.key for j in jobs}:
                    # Else this rank would skip them, and rank 0 wait for it in each one.
                    raise ConfigError(
                        f"Rank {ranks.rank} plans other method runs than rank 0: "
                        f"{len(unplanned)} of rank 0's are not in its plan. Start every rank "
                        "with the same pipeline file, --set overrides and featpipe version."
                    )
                todo, rows = [j for j in jobs if j.key in todo_keys], []
        shared = [j for j in todo if j.stage == finetune_stage.NAME]
        try:
            for backbone in dict.fromkeys(
                j.backbone for j in todo if j.stage != finetune_stage.NAME
            ):
                feature_store(context, backbone)  # every rank fills its parts
        except KeyboardInterrupt as exc:
            raise _interrupted(exc, _finished(run_plan, rows), len(jobs)) from None
        # DDP fine-tuning, a rank per process; the group is made only when there is some
        with process_group(device) if shared else contextlib.nullcontext():
            self._run_jobs(context, jobs, run_plan, rows, shared, write=main, report=False)
        if not main:
            return context.run_dir
        # The other ranks may be gone: a head that would share its passes among the ranks
        # (logreg_stream) must not wait for them.
        with alone():
            rest = [j for j in todo if j not in shared]
            return self._run_jobs(context, jobs, run_plan, rows, rest)

    def _prepare(
        self,
        fingerprint: str | None = None,
        *,
        write: bool = True,
        held: contextlib.ExitStack | None = None,
    ) -> tuple[RunContext, list[Job], RunPlan, list[dict]]:
        """Check everything that can be checked before compute, then plan the run, lock the
        run folder until ``held`` closes, read its rows and save the plan beside its config
        (unless ``write`` is False: torchrun ranks but 0, which read no rows); nothing is
        written unless the checks pass. ``fingerprint``, given, is the source's (from rank
        0), not computed again."""
        from featpipe.device import resolve_device

        cfg = self.config
        check_grids(cfg)  # before the source is even opened: the cheapest checks first
        device = str(resolve_device(cfg.device))
        if self.source is None:
            self.source = open_pipeline_source(cfg.source)
        check_sizes(cfg, self.source)
        check_folders_outside_images(cfg, self.source)
        built = check_models(cfg, finetune_rows(cfg, self.source))
        check_cache_dir(cfg)  # the last check: it makes the folder
        if fingerprint is None:
            fingerprint = self.source.fingerprint(content=cfg.source.hash_contents)
        jobs = plan(
            cfg, fingerprint, cv_selection=len(self.source.indices("val")) == 0, backbones=built
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
        for job in jobs:  # the identities of the backbones built by the checks: no second build
            if job.backbone_at and job.backbone_at[0] in built:
                spec, size = job.backbone_at
                context.once(("identity", spec, size), built[spec].at_size(size).identity)
            if job.stage == finetune_stage.NAME and job.backbone in built:  # its dtype too
                finetune_stage.model_dtype(context, job.backbone, built)
        results = context.run_dir / RESULTS_FILE
        if not write:
            return context, jobs, _run_plan(cfg, jobs, fingerprint, {}, {}), []
        check_run_folder(context.run_dir, CONFIG_FILE)
        # One run at a time per folder: a second one waits, then reuses the first's rows
        # (else both ran every job, appended each row twice and raced on the report files).
        held.enter_context(
            StoreLock(results, what=f"the run folder {context.run_dir}", option="--out")
        )
        rows = read_results(results, repair=True)
        finished = _keys(rows)
        identities = {
            j.key: backbone_identity(context, j)
            for j in jobs
            if j.backbone_at and j.key in finished
        }
        stores = {
            j.key: finetune_stage.planned(context, j, built)
            if j.stage == finetune_stage.NAME
            else planned_store(context, j.store_of, built)
            for j in jobs
            if j.store_of and j.key in finished
        }
        run_plan = _run_plan(cfg, jobs, fingerprint, identities, stores)
        config_json = json.dumps(cfg.to_json(), indent=2) + "\n"
        if _remove_stale_reports(context.run_dir, rows, run_plan):
            self.log(
                "removed the report of an earlier configuration; this run writes its own "
                f"(`featpipe report {context.run_dir}` shows the finished rows meanwhile)"
            )
        self.earlier_n_boots = _earlier_n_boots(context.run_dir)
        write_text_atomic(context.run_dir / CONFIG_FILE, config_json)
        write_plan(context.run_dir, run_plan)
        return context, jobs, run_plan, rows


def _run_plan(
    config: PipelineConfig,
    jobs: list[Job],
    fingerprint: str,
    identities: dict[tuple, dict],
    stores: dict[tuple, dict],
) -> RunPlan:
    """The run's plan: its jobs, each with the backbone and the feature store its row must
    come from (when known)."""
    all_images = config.features.on_error == "fail"
    methods = [
        PlannedRun(j.method, j.seed, j.config_hash, j.label, j.deterministic,
                   identity_hash(identities.get(j.key)), j.frozen, all_images, stores.get(j.key))
        for j in jobs
    ]  # fmt: skip
    return RunPlan(config.name, methods, n_boot=config.n_boot, source_fingerprint=fingerprint)


def _earlier_n_boots(run_dir: Path) -> set[int]:
    """The n_boot of the folder's earlier run, as its plan.json and config.json say (before
    this run rewrites them). Rows do not record theirs where it matters: those made when job
    hashes held n_boot predate metrics.n_boot."""
    found = set()
    with contextlib.suppress(ConfigError):  # a damaged plan: the config may still tell
        if (before := read_plan(run_dir)) is not None:
            found.add(before.n_boot)
    with contextlib.suppress(OSError, ValueError, AttributeError):
        n_boot = json.loads((run_dir / CONFIG_FILE).read_text(encoding="utf-8")).get("n_boot")
        if isinstance(n_boot, int):
            found.add(n_boot)
    return found


def _n_boot_refits(
    jobs: list[Job], rows: list[dict], todo: set[tuple], n_boots: set[int]
) -> list[str]:
    """One line per stage counting its jobs to run whose row is there but under the hash an
    older featpipe gave at another n_boot (see jobs.HASHED_N_BOOT): without it a user sees
    minutes of fitting and no reason."""
    made = _keys(rows)
    found: dict[str, dict[int, int]] = {}  # stage -> n_boot -> jobs
    for job in jobs:
        if job.key not in todo or job.key in made or job.hash_at_n_boot is None:
            continue  # finished, or its row was made otherwise (said per job)
        for n_boot in sorted(n_boots):
            if (job.method, job.seed, job.hash_at_n_boot(n_boot)) in made:
                by_n = found.setdefault(job.stage, {})
                by_n[n_boot] = by_n.get(n_boot, 0) + 1
                break
    lines = []
    for stage, by_n in found.items():
        n = sum(by_n.values())
        word = "fine-tune" if stage == finetune_stage.NAME else stage
        lines.append(
            f"{counted(n, f'{word} row')} {agrees(n, 'was', 'were')} made with n_boot "
            f"{' or '.join(map(str, sorted(by_n)))}, which older featpipe versions keyed jobs on; "
            f"re-fitting {agrees(n, 'it', 'them')} once"
        )
    return lines


def _remove_stale_reports(run_dir: Path, rows: list[dict], run_plan: RunPlan) -> bool:
    """Remove the reports of an earlier configuration, those that show a row the new plan does
    not: a re-run stopped before its own report would leave them beside the new plan.json,
    recommending methods of the old configuration as this run's results. Their plots go too:
    the new report may draw fewer (no fine-tune, one layer), and would leave the others.
    Returns whether it removed them."""
    reports = [run_dir / name for name in (REPORT_MD, REPORT_HTML) if (run_dir / name).exists()]
    reports += sorted((run_dir / PLOTS_DIR).glob("*.png"))
    if not reports:
        return False
    try:
        before = read_plan(run_dir)
    except ConfigError:  # a damaged plan.json: what the reports show cannot be known
        before = None
    shown = rows if before is None else before.select(rows)[0]
    current = {id(row) for row in run_plan.select(rows)[0]}
    if all(id(row) in current for row in shown):
        return False
    for path in reports:
        path.unlink(missing_ok=True)
    return True


def _made_otherwise(row: dict, job: Job, now: dict | None, planned: PlannedRun) -> str:
    """How a finished row of ``job`` differs from what the run would make (``planned``):
    another version of its backbone (the identity fields that differ), images left out where
    the plan wants all (on_error is now "fail"), or, for a fine-tune, other images left out or
    other modules frozen (the backbone's stage list changed)."""
    made = (row.get("provenance") or {}).get("backbone") or {}
    now = now or {}
    changed = sorted(k for k in set(made) | set(now) if made.get(k) != now.get(k))
    fields = ", ".join(k for k in changed if k != finetune_stage.LEFT_OUT)
    frozen = (row.get("provenance") or {}).get("frozen")
    why = []
    if fields:
        why.append(f"by another version of backbone {job.backbone} (changed since: {fields})")
    if finetune_stage.LEFT_OUT in changed:
        why.append("over other images: the feature stores leave out other images now")
    if planned.all_images and (count := left_out(row)):
        why.append(f'without {count} images (on_error = "skip"), where on_error is now "fail"')
    if not planned.same_store(row):
        why.append(_store_change(row, planned.store))
    if frozen is not None and job.frozen is not None and tuple(frozen) != job.frozen:
        why.append(
            f"with {', '.join(frozen)} frozen, where the backbone's stages now freeze "
            f"{', '.join(job.frozen)}"
        )
    return " and ".join(why) or f"by another version of backbone {job.backbone}"


def _store_change(row: dict, now: dict) -> str:
    """How a row's feature store differs from the run's: its compute (precision, decode
    path) where the row or its store tells it, else its key, which covers more than how the
    features were computed (an old row whose store is gone). A fine-tune's compute is how it
    trained (a full fine-tune reads no features)."""
    compute = recorded_compute(row)
    if compute is None:
        key = ((row.get("provenance") or {}).get("store") or {}).get("key")
        return f"on another feature store (store {key}, now {now['key']})"

    fine_tune = row.get("kind") == "finetune"
    how = "by training otherwise" if fine_tune else "on features computed otherwise"
    return f"{how} ({compute_words(compute)}; now {compute_words(now['compute'])})"


def in_file_words(message: str) -> str:
    """An error's hint as a pipeline file gives it: each setting of FILE_KEYS as its key,
    ``on_error="skip"`` as ``features.on_error = "skip"``, ``sync_bn=True`` as
    ``finetune.sync_bn = true`` and ``cache_dir (CLI: --cache-dir)`` as
    ``features.cache_dir``, without the command line's aside; and "run again (with
    overwrite=True ...)", a setting no pipeline has, "run again (after deleting the store ...)"."""
    message = _OVERWRITE.sub("after deleting the store", message)
    return _SETTING.sub(_file_setting, message)


def _file_setting(m: re.Match) -> str:
    """The pipeline key of a setting _SETTING found, with its value in TOML's words."""
    key, quote, value = FILE_KEYS[m[1]], m[2], m[3]
    if value is None:  # named with its flag, no value
        return key
    if not quote and value in ("True", "False"):
        value = value.lower()
    elif not quote and not re.fullmatch(r"[\d.e+-]+", value):  # None, a name: no TOML value
        return m[0]
    return f"{key} = {quote}{value}{quote}"


def _quiet(_message: str) -> None:
    return None


def _keys(rows: list[dict]) -> set[tuple[str, int, str]]:
    return {(r["method"], r["seed"], r["config_hash"]) for r in rows}


def _finished(run_plan: RunPlan, rows: list[dict]) -> int:
    return len(run_plan.methods) - len(run_plan.select(rows)[1])


def _interrupted(exc: KeyboardInterrupt, done: int, total: int) -> Interrupted:
    """The interruption told with how many method runs are done (and what the interrupted
    step said about its own state, e.g. extraction's chunks)."""
    stop = Interrupted.from_exception(exc)
    inner = stop.message.removeprefix("interrupted").strip(" :;")
    inner = inner.removesuffix("run the same command to resume").strip(" ;")
    detail = f" ({inner})" if inner else ""
    return stop.with_message(
        f"interrupted: {done} of {counted(total, 'method run')} done{detail}; "
        "run the same command to resume"
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
