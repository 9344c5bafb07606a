"""Filling a parted store (layout in :mod:`featpipe.store.parts`) from one or many processes.

- Under torchrun, rank 0 plans: it fingerprints the source, fixes the key and lays out the
  store and its parts (or finds them from an earlier run), then publishes the plan through
  torchrun's key-value store. The other ranks build their plan from it without scanning the
  source. Every rank then claims parts one at a time from a shared counter, so fast ranks take
  more; the row index is the write address: no sampler, no padding, no gathering, and no
  collective in the loop.
- A job array (``--shard I/N``): the first task to take the store's lock lays it out; task I
  fills the parts ``k`` with ``k % N == I``.
- A lone process on a parted store fills every part still to do.

Each part is written by today's chunk loop under its own lock, taken without waiting: a part
held by another process is left to it. A part already complete is skipped, so any later run,
with any number of processes, continues from the per-chunk flags. When a process has no more
parts to fill it takes the top-level file's lock for a moment and, if every part is complete,
verifies them and marks the store complete: the last to finish completes the store, with no
end barrier. Rank 0 (and a lone process) then waits for the store to be complete, filling
any part that no one holds; other ranks and shards exit once their share is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from featpipe.data.source import ImageSource
from featpipe.device import resolve_device
from featpipe.distributed.exchange import claims, job_store, publish, receive
from featpipe.distributed.progress import progress_bar
from featpipe.distributed.ranks import channel, current_ranks
from featpipe.errors import (
    ConfigError,
    FeaturePipeError,
    StoreInUseError,
    StoreMismatchError,
)
from featpipe.extract.extractor import (
    NOTHING_COMPUTED,
    ExtractionPlan,
    _refuse_skipped,
    _reused,
    computing,
    plan_extraction,
    store_layout,
)
from featpipe.extract.inference import Inference
from featpipe.extract.lanes import lane_count
from featpipe.extract.target import Action
from featpipe.extract.target import plan as decide
from featpipe.interrupt import Interrupted
from featpipe.store import FeatureStore
from featpipe.store.files import open_h5
from featpipe.store.lock import StoreLock
from featpipe.store.parts import (
    Part,
    check_renamed,
    create_parted,
    damaged_part,
    finish_parted,
    lost_datasets,
    mapped_shapes,
    open_failure,
    part_bounds,
    part_complete,
    parted_at,
    parts_of,
    repair_missing,
)
from featpipe.store.schema import CHUNK_DONE, decode_attr, n_chunks_for

WAIT_POLL_S = 2.0
PROBE_WAIT_S = 0.1  # how long a part's lock is waited for before the part is left to its holder


def parse_shard(text: str) -> tuple[int, int]:
    """``"1/4"`` -> (1, 4): task 1 of a job array of 4."""
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        index, count = -1, 0
    check_shard((index, count), text)
    return index, count


def check_shard(shard: tuple[int, int], given: object = None) -> None:
    index, count = shard
    if not (count >= 1 and 0 <= index < count):
        raise ConfigError(
            f"A shard is I/N with 0 <= I < N (task I of a job array of N, e.g. 0/4 ... 3/4, "
            f"from $SLURM_ARRAY_TASK_ID); got {given if given is not None else shard!r}."
        )


def run_parted(plan: ExtractionPlan, shard: tuple[int, int] | None) -> FeatureStore:
    """Fill the parted store of ``plan`` as shard ``shard`` of a job array (None: a lone
    process, which fills every part and returns the complete store)."""
    if shard is not None:
        check_shard(shard)
    with computing(plan) as inference:
        pending = prepare(plan, inference, join=shard is not None)
        if pending is None:
            return _reused(FeatureStore(plan.path), plan.on_error)
        mine = pending if shard is None else [p for p in pending if p.index % shard[1] == shard[0]]
        who = "one process" if shard is None else f"shard {shard[0]}/{shard[1]}"
        return fill(plan, inference, mine, sum(p.rows for p in mine), who, wait=shard is None)


def extract_ranks(
    source: ImageSource | str, backbone, layers: Sequence[str], options: dict
) -> FeatureStore:
    """:func:`featpipe.extract.extract` on every rank of a torchrun job (see the module)."""
    ranks = current_ranks()
    device = resolve_device(options.get("device", "auto"))
    with job_store(device) as kv:
        # The n-th call of every rank meets under the same keys, whatever its arguments:
        # ranks whose arguments differ must meet to find out (_check_same_call).
        keys = channel("extract", ranks.restart)
        call = _call(backbone, layers, options, device)
        if ranks.is_main:
            return _lead(kv, keys, call, source, backbone, layers, options)
        message = receive(kv, f"{keys}/plan")
        if "error" in message:
            raise FeaturePipeError(f"rank 0 could not plan the extraction: {message['error']}")
        _check_same_call(message["call"], call, ranks.tag)
        options = {**options, "out": message["path"], "overwrite": False}
        plan = plan_extraction(source, backbone, layers, **options, request=message["request"])
        if message["ids"] != ids_digest(plan.source):
            raise ConfigError(
                f"{ranks.tag} opened another image set than rank 0 (other sample ids). Every "
                "rank must be started with the same source and split options."
            )
        if message["pending"] is None:
            return _reused(FeatureStore(plan.path), plan.on_error)
        parts = _parts(plan.path, message["pending"])
        mine = claims(kv, f"{keys}/next", parts)
        expected = sum(p.rows for p in parts) // ranks.world_size
        with computing(plan) as inference:
            return fill(plan, inference, mine, expected, ranks.tag, wait=False)


def _lead(kv, keys: str, call: dict, source, backbone, layers, options: dict) -> FeatureStore:
    """Rank 0: plan, lay out, publish the plan, then fill parts like every rank."""
    ranks = current_ranks()
    published = False
    try:
        plan = plan_extraction(source, backbone, layers, **options)
        # torchrun's agent keeps its store across elastic restarts: there the restarted rank 0
        # finds that this job laid the store out, and resumes it rather than overwrite it.
        laid_out = f"featpipe/extract/laid-out/{keys.rsplit('/', 1)[1]}/{plan.path}"
        with computing(plan) as inference:
            pending = prepare(plan, inference, join=kv.check([laid_out]))
            publish(kv, laid_out, True)
            publish(
                kv,
                f"{keys}/plan",
                {
                    "call": call,
                    "request": plan.request,
                    "path": str(plan.path),
                    "ids": ids_digest(plan.source),
                    "pending": None if pending is None else [p.index for p in pending],
                },
            )
            published = True
            if pending is None:
                return _reused(FeatureStore(plan.path), plan.on_error)
            mine = claims(kv, f"{keys}/next", pending)
            expected = sum(p.rows for p in pending) // ranks.world_size
            return fill(plan, inference, mine, expected, ranks.tag, wait=True)
    except BaseException as exc:
        if not published:  # the other ranks wait for the plan: tell them it will not come
            publish(kv, f"{keys}/plan", {"error": str(exc) or type(exc).__name__})
        raise


# Options a rank may set for itself (rank 0 alone showing progress, a GPU per rank): they
# change how it works, not what it writes. Every other argument must agree across the ranks.
OWN_OPTIONS = ("progress", "workers", "lock_timeout", "device")


def _call(backbone, layers, options: dict, device) -> dict[str, str]:
    """The arguments of an extraction call that every rank must give alike, as text."""
    spec = backbone if isinstance(backbone, str) else getattr(backbone, "spec", repr(backbone))
    call = {"backbone": repr(spec), "layers": repr(list(layers)), "device": repr(device.type)}
    for name, value in sorted(options.items()):
        if name not in OWN_OPTIONS:
            call[name] = repr(os.fspath(value) if isinstance(value, os.PathLike) else value)
    return call


def _check_same_call(main: dict[str, str], mine: dict[str, str], who: str) -> None:
    differ = [
        f"{name} {mine.get(name)} (rank 0: {main.get(name)})"
        for name in sorted(main.keys() | mine.keys())
        if main.get(name) != mine.get(name)
    ]
    if differ:
        raise ConfigError(
            f"{who} was called with other extraction settings than rank 0: "
            f"{'; '.join(differ)}. Every rank must make the same extract call (only "
            f"{', '.join(OWN_OPTIONS)} may differ, the device by its index alone)."
        )


def ids_digest(source: ImageSource) -> str:
    h = hashlib.sha256()
    for sample_id in source.ids:
        h.update(str(sample_id).encode() + b"\0")
    return h.hexdigest()


def _parts(path: Path, indices: Sequence[int]) -> list[Part]:
    with open_h5(path) as f:
        parts = parts_of(path, f.attrs)
    return [parts[i] for i in indices]


# -- laying out --------------------------------------------------------------------------------
def prepare(plan: ExtractionPlan, inference: Inference, *, join: bool = False) -> list[Part] | None:
    """Under the store's lock: lay out the parted store of ``plan`` (or find it, recreating
    missing part files); returns the parts not complete yet, or None when the store is
    complete and is reused. With ``join`` (a ``--shard`` task, or rank 0 of a restarted
    torchrun attempt), ``plan.overwrite`` replaces only a store that is not this job's
    (:func:`_same_job`): every task of a job array runs the same command, and the first one
    to get here has laid out the store the others fill."""
    with StoreLock(plan.path, timeout=plan.lock_timeout):
        overwrite = plan.overwrite and not (join and _same_job(plan))
        if not overwrite and parted_at(plan.path) and _key(plan.path) == plan.request.key:
            _refuse_damaged_parts(plan.path)
            repair_missing(plan.path)
        action = decide(plan.path, plan.request, overwrite)
        if action is Action.REUSE:
            return None
        if action is Action.CREATE:
            _create(plan, inference)
        elif not parted_at(plan.path):
            raise ConfigError(
                f"{plan.path} is a one-file store, half written by a single process: finish "
                "it with one process (the same call without torchrun and without a shard "
                "(CLI: --shard)), or start it again in parts with overwrite=True."
            )
        else:
            _refuse_skipped(FeatureStore(plan.path), plan.on_error)
        with open_h5(plan.path) as f:
            parts = parts_of(plan.path, f.attrs)
    return [p for p in parts if not part_complete(p)]


def _refuse_damaged_parts(path: Path) -> None:
    """A part file HDF5 cannot read (cut short by a kill or a full disk, overwritten) or that
    lacks a dataset the top-level file maps from it (a foreign file, one edited by hand),
    named with its fix: read through the top-level file it was "the store is damaged", whose
    advice (--overwrite) recomputes every part, and does nothing for a --shard task."""
    with open_h5(path) as f:
        check_renamed(path, f)  # before repair_missing lays out parts where none are read
        parts, shapes = parts_of(path, f.attrs), mapped_shapes(f)
    for part in parts:
        if not part.path.is_file():
            continue  # missing: recreated by repair_missing
        try:
            with open_h5(part.path) as p:
                reason = lost_datasets(p, part, shapes)  # e.g. deleted by hand
                if reason is None:
                    p[CHUNK_DONE][:]  # a file cut short can fail here
                    continue
        except StoreInUseError:
            continue  # another process is writing it
        except (OSError, FeaturePipeError) as exc:
            reason = open_failure(exc)
        raise damaged_part(part, path, reason)


def _key(path: Path) -> str:
    with open_h5(path) as f:
        return str(decode_attr("key", f.attrs.get("key", "")))


def _same_job(plan: ExtractionPlan) -> bool:
    """Whether the store at ``plan.path`` is the parted store ``plan`` would lay out: the same
    inputs (key) and rows per chunk (then the same parts)."""
    if not parted_at(plan.path):
        return False
    try:
        with open_h5(plan.path) as f:
            key = str(decode_attr("key", f.attrs.get("key", "")))
            rows = int(f.attrs.get("rows_per_chunk", 0))
    except (OSError, FeaturePipeError):
        return False  # unreadable: not a store to join
    return key == plan.request.key and rows == plan.rows_per_chunk


def _create(plan: ExtractionPlan, inference: Inference) -> None:
    n_chunks = n_chunks_for(len(plan.source.ids), plan.rows_per_chunk)
    # A sharded source (tar files) says where its shards start: parts follow them.
    starts = getattr(plan.source, "shard_starts", None)
    bounds = part_bounds(n_chunks, plan.rows_per_chunk, starts() if starts else None)
    create_parted(plan.path, **store_layout(plan, inference), bounds=bounds)


# -- filling -----------------------------------------------------------------------------------
def fill(
    plan: ExtractionPlan,
    inference: Inference,
    parts: Iterable[Part],
    expected_rows: int,
    who: str,
    *,
    wait: bool,
) -> FeatureStore:
    """Fill ``parts`` (each under its own lock, skipped when another process holds it or it
    is complete), then complete the store if every part is; with ``wait``, wait for the
    others (filling what no one holds) until it is complete. Returns the store with this
    process's stats in ``store.extraction``."""
    bar = progress_bar(
        expected_rows, unit="img", desc=f"extract {plan.path.name}", enabled=plan.progress
    )
    stats = {**NOTHING_COMPUTED, "parts_filled": 0, "resumed": False}
    layout = _file_id(plan.path)
    try:
        _fill_parts(plan, inference, parts, who, bar, stats, layout)
        complete = _try_finish(plan, who, layout)
        if wait and not complete:
            bar.desc = f"extract {plan.path.name} (waiting for the other processes' parts)"
        while wait and not complete:
            time.sleep(WAIT_POLL_S)
            _refuse_replaced(plan.path, layout)
            left = [p for p in _all_parts(plan.path) if not part_complete(p)]
            _fill_parts(plan, inference, left, who, bar, stats, layout)
            complete = _try_finish(plan, who, layout)
        bar.total = bar.n  # this process's share is done, whatever the guess said
    except KeyboardInterrupt as exc:  # run_chunks wrote what it had computed
        raise Interrupted.from_exception(exc).with_message(
            f"interrupted: this process filled {stats['parts_filled']} parts of "
            f"{plan.path}; the finished chunks are kept, run the same command to resume"
        ) from None
    except Exception:  # a part file gone with its replaced store: say so, not what failed
        _refuse_replaced(plan.path, layout)
        raise
    finally:
        bar.close()
    seconds = stats["seconds"]
    stats["images_per_s"] = round(stats["images"] / seconds, 1) if seconds > 0 else 0.0
    stats["seconds"] = round(seconds, 3)
    stats.update(
        device=str(plan.device),
        data_path=plan.data_path.name,
        filled_by=who,
        complete=complete,
    )
    with _settled(plan.path):
        store = FeatureStore(plan.path)
        if complete:  # the whole store's; until then, those of the parts this process filled
            stats["skipped"] = len(store.skipped())
    store.extraction = stats
    return store


def _fill_parts(plan, inference, parts: Iterable[Part], who: str, bar, stats: dict, layout) -> None:
    for part in parts:
        with contextlib.ExitStack() as held:
            try:
                # `cache list` takes and drops a part's lock to see whether it is in use: wait
                # out such an instant before leaving the part to another process.
                held.enter_context(
                    StoreLock(part.path, timeout=PROBE_WAIT_S, notify=lambda _m: None)
                )
            except StoreInUseError:
                continue  # another process fills it
            _refuse_replaced(plan.path, layout)  # its parts could have other rows
            if part_complete(part):
                continue
            run = plan.run_chunks(
                inference, part.path, row_offset=part.first_row, bar=bar, filled_by=who
            )
        summed = ("images", "seconds", "bytes_written", "computed_chunks", "skipped", "skipped_now")
        for name in summed:
            stats[name] += run[name]
        stats["resumed"] |= bool(run.get("resumed"))
        stats["parts_filled"] += 1
        if bar.total and bar.n > bar.total:  # a rank's share is a guess: it took more parts
            bar.total = bar.n
        bar.desc = f"extract {plan.path.name}: {stats['parts_filled']} parts filled"


def _try_finish(plan: ExtractionPlan, who: str, layout) -> bool:
    """Complete the store if every part is complete (the top-level lock held briefly)."""
    run = {
        "device": str(plan.device),
        "data_path": plan.data_path.name,
        "workers": plan.workers,
        "lanes": lane_count(plan.device, plan.workers, plan.torch_compile),
        "on_error": plan.on_error,
        "completed_by": who,
    }
    with StoreLock(plan.path, notify=lambda _message: None):
        _refuse_replaced(plan.path, layout)
        return finish_parted(plan.path, run)


def _file_id(path: Path) -> tuple[int, int] | None:
    """The file at ``path`` (device, inode): a store laid out again (``--overwrite`` by
    another job) is a new file, made before the old one is replaced, so another inode."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _refuse_replaced(path: Path, layout: tuple[int, int] | None) -> None:
    """Refuse to go on filling (or to complete) a store that another job replaced while
    this process filled its parts: its writes went into the old store's deleted files."""
    if _file_id(path) != layout:
        raise StoreMismatchError(
            f"{path} was replaced by another job (an extraction that overwrote it) while this "
            "process filled its parts: what it wrote went to the replaced store and is lost, "
            "and the store now there is not this process's to complete. Run the same command "
            "again to continue or reuse the store now at that path."
        )


def _all_parts(path: Path) -> list[Part]:
    with _settled(path), open_h5(path) as f:
        return parts_of(path, f.attrs)


def _settled(path: Path) -> StoreLock:
    """The store's lock, held to read its top-level file: another rank completing the store
    holds it with the file open for writing, which a read would meet (HDF5 locks the file)
    and fail on at once."""
    return StoreLock(path, notify=lambda _message: None)
