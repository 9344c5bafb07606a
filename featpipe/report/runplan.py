"""``plan.json``: which rows of a run folder's results.jsonl belong to its current configuration.

``featpipe run`` writes it (beside ``config.json``) before computing anything. It lists every
(method, seed, config_hash) the current config produces, so reports use exactly those rows:
rows of earlier configurations stay in results.jsonl as history but never reach a table, a
comparison or a plot. Layout::

    {"format": "featpipe.plan", "version": 1, "run": "demo", "n_boot": 1000,
     "source_fingerprint": "...",
     "methods": [{"method": "toy/knn@pooled", "seed": 0, "config_hash": "...",
                  "label": "kNN on layer pooled", "deterministic": true}, ...]}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from featpipe.errors import ConfigError
from featpipe.report.results import write_text_atomic

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

    @property
    def key(self) -> tuple[str, int, str]:
        return self.method, self.seed, self.config_hash


@dataclass(frozen=True)
class RunPlan:
    """The jobs of a run in run order, and the settings its report needs."""

    run: str
    methods: list[PlannedRun]
    n_boot: int = 1000
    source_fingerprint: str | None = None

    def select(self, rows: list[dict]) -> tuple[list[dict], list[PlannedRun], int]:
        """(rows of this plan in plan order, planned runs without a row, rows left out)."""
        by_key = {(r["method"], r["seed"], r["config_hash"]): r for r in rows}
        current = [by_key[m.key] for m in self.methods if m.key in by_key]
        missing = [m for m in self.methods if m.key not in by_key]
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
                }
                for m in self.methods
            ],
        }


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
