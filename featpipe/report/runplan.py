"""``plan.json``: which rows of a run folder's results.jsonl belong to its current configuration.

``featpipe run`` writes it (beside ``config.json``) before computing anything. It lists every
(method, seed, config_hash) the current config produces, so reports use exactly those rows:
rows of earlier configurations stay in results.jsonl as history but never reach a table, a
comparison or a plot. A method whose row was already there when the run began also names the
backbone its row must come from (``backbone``: :func:`identity_hash` of
``Backbone.identity()``, which config hashes leave out): a row made by another version of the
backbone (its weights, preprocessing or pooling changed under the same spec) is history too.
Layout::

    {"format": "featpipe.plan", "version": 1, "run": "demo", "n_boot": 1000,
     "source_fingerprint": "...",
     "methods": [{"method": "toy/knn@pooled", "seed": 0, "config_hash": "...",
                  "label": "kNN on layer pooled", "deterministic": true,
                  "backbone": "..."}, ...]}

A partial:N fine-tune also names the modules it freezes (``frozen``), which backbone
identities leave out (a backbone's stage list decides them): a row recording others is history.
Under ``on_error = "fail"`` every method says ``"all_images": true``: a row that left images out
(made under "skip", which config hashes leave out) is history too. A probe whose row was already
there also names the feature store the run reads now (``store``: its ``key`` and ``compute``,
the precision and decode path that the device decides and config hashes leave out): a row made
on features computed otherwise (on the CPU, where the run now computes them on CUDA) is history.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from featpipe.atomic import write_text_atomic
from featpipe.errors import ConfigError, FeaturePipeError
from featpipe.evaluate.metrics import DEFAULT_BOOT

PLAN_FILE = "plan.json"
FORMAT = "featpipe.plan"
VERSION = 1


@dataclass(frozen=True)
class PlannedRun:
    """One (method, seed) job of a run's plan."""

    method: str
    seed: int
    config_hash: str
    label: str = ""
    deterministic: bool = False
    backbone: str | None = None  # identity_hash its row must record; None: any row
    # What a partial:N fine-tune froze (stage lists are not in identities); None: any row
    frozen: tuple[str, ...] | None = None
    # Its row must leave out no image (on_error = "fail"): one made under "skip" that left
    # some out is not reused (on_error is not hashed, so the config hash cannot tell).
    all_images: bool = False
    # The feature store its row must be computed on ({key, compute}); None: any row
    store: dict | None = None

    @property
    def key(self) -> tuple[str, int, str]:
        return self.method, self.seed, self.config_hash

    def made_by(self, row: dict) -> bool:
        """Whether ``row`` comes from this run's backbone, with the same modules frozen, on
        features computed alike, and leaves out no image when the plan asks for all of them.
        A row that records no backbone (no featpipe wrote one since results.jsonl exists), or
        no frozen modules (written before rows recorded them), cannot be checked, and passes."""
        provenance = row.get("provenance") or {}
        made = identity_hash(provenance.get("backbone"))
        frozen = provenance.get("frozen")
        return (
            (self.backbone is None or made is None or made == self.backbone)
            and (self.frozen is None or frozen is None or tuple(frozen) == self.frozen)
            and not (self.all_images and left_out(row))
            and self.same_store(row)
        )

    def same_store(self, row: dict) -> bool:
        """Whether ``row`` was computed on features computed as the plan's store computes
        them: the same ``compute`` where the row or its store tells it (a store of other
        layers holds the same features, see :func:`recorded_compute`), else the same store
        key. A row that records no store passes."""
        if self.store is None:
            return True
        if (compute := recorded_compute(row)) is not None:
            return compute == self.store["compute"]
        provenance = row.get("provenance") or {}
        return (provenance.get("store") or {}).get("key") in (None, self.store["key"])


def recorded_compute(row: dict) -> dict | None:
    """How ``row``'s features were computed (precision, decode path): as its provenance
    records it, else, for a row written before rows recorded it, as the store it records
    says while that store is still at its path with its key; None where neither tells."""
    provenance = row.get("provenance") or {}
    if provenance.get("compute") is not None:
        return provenance["compute"]
    store = provenance.get("store") or {}
    if not (path := store.get("path")):
        return None
    try:
        stamp = Path(path).stat()
    except OSError:  # gone
        return None
    return _store_compute(path, store.get("key"), (stamp.st_mtime_ns, stamp.st_size))


@lru_cache(maxsize=64)
def _store_compute(path: str, key: str | None, _stamp: tuple) -> dict | None:
    """The ``compute`` of the store at ``path`` if it holds ``key``; cached per file version
    (``_stamp``): a plan checks every row of a folder, several times a run."""
    found = store_at(path, key, read_lock=False)
    return None if found is None else found.attrs.get("compute")


def store_at(path: str | None, key: str | None, *, read_lock: bool = True):
    """The store at ``path`` if it still holds the features of ``key`` (the store a row
    records), else None: nothing may describe other data extracted there since, nor a
    damaged file stop a report."""
    from featpipe.store import FeatureStore

    if not path or not Path(path).is_file():
        return None
    try:
        store = FeatureStore(path, read_lock=read_lock)
    except FeaturePipeError:  # damaged, or no featpipe store
        return None
    return store if store.key == key else None


def left_out(row: dict) -> int:
    """How many images a row's method left out (on_error = "skip"), as its row records."""
    return int(((row.get("provenance") or {}).get("skipped") or {}).get("count") or 0)


def identity_hash(identity: dict | None) -> str | None:
    """A short hash of a backbone identity (spec, weights sha256, preprocessing, ...), as a
    row's provenance records it; None for none."""
    if not identity:
        return None
    text = json.dumps(identity, sort_keys=True)  # a tuple hashes as the list JSON reads back
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RunPlan:
    """The jobs of a run in run order, and the settings its report needs."""

    run: str
    methods: list[PlannedRun]
    n_boot: int = DEFAULT_BOOT
    source_fingerprint: str | None = None

    def select(self, rows: list[dict]) -> tuple[list[dict], list[PlannedRun], int]:
        """(rows of this plan in plan order, planned runs without a row, rows left out).
        Of several rows of one planned run, the last one its backbone made is used."""
        by_key: dict[tuple, list[dict]] = {}
        for r in rows:
            by_key.setdefault((r["method"], r["seed"], r["config_hash"]), []).append(r)
        made = {m.key: [r for r in by_key.get(m.key, []) if m.made_by(r)] for m in self.methods}
        # Under the plan's run name and label: a reused row keeps those of the run that made it
        # (before a second backbone joined, "kNN on layer pooled" lacked the "[backbone]" suffix).
        current = [
            _as_planned(made[m.key][-1], self.run, m.label) for m in self.methods if made[m.key]
        ]
        missing = [m for m in self.methods if not made[m.key]]
        return current, missing, len(rows) - len(current)

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "run": self.run,
            "n_boot": self.n_boot,
            "source_fingerprint": self.source_fingerprint,
            "methods": [
                {
                    "method": m.method,
                    "seed": m.seed,
                    "config_hash": m.config_hash,
                    "label": m.label,
                    "deterministic": m.deterministic,
                    **({"backbone": m.backbone} if m.backbone else {}),
                    **({"frozen": list(m.frozen)} if m.frozen is not None else {}),
                    **({"all_images": True} if m.all_images else {}),
                    **({"store": m.store} if m.store else {}),
                }
                for m in self.methods
            ],
        }


def _as_planned(row: dict, run: str, label: str) -> dict:
    """``row`` under ``run`` and ``label`` where it records them (a copy, only when that
    changes it); an empty label keeps the row's own."""
    names = {k: v for k, v in (("run", run), ("label", label)) if v and k in row}
    return row if all(row[k] == v for k, v in names.items()) else {**row, **names}


def write_plan(run_dir: str | Path, plan: RunPlan) -> Path:
    """Write ``run_dir/plan.json`` atomically (a kill never leaves half a file)."""
    path = Path(run_dir) / PLAN_FILE
    write_text_atomic(path, json.dumps(plan.to_json(), indent=1) + "\n")
    return path


def read_plan(run_dir: str | Path) -> RunPlan | None:
    """The plan saved in ``run_dir``, or None for a run folder written before plans were."""
    path = Path(run_dir) / PLAN_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise ValueError(f"format {data.get('format')!r} version {data.get('version')!r}")
        methods = [
            PlannedRun(
                str(m["method"]),
                int(m["seed"]),
                str(m["config_hash"]),
                str(m.get("label", "")),
                bool(m.get("deterministic", False)),
                m.get("backbone"),
                None if m.get("frozen") is None else tuple(m["frozen"]),
                bool(m.get("all_images", False)),
                m.get("store"),
            )
            for m in data["methods"]
        ]
        return RunPlan(
            str(data["run"]), methods, int(data["n_boot"]), data.get("source_fingerprint")
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"{path} is not a featpipe plan ({exc}); run `featpipe run` on the pipeline again "
            "to rewrite it."
        ) from None
