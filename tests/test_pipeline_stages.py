"""Stages are plug-ins: a new stage is a module with plan/run and one registry entry."""

from __future__ import annotations

import types

import numpy as np
import pytest

from featpipe.errors import ConfigError
from featpipe.evaluate import Cost, Usage
from featpipe.pipeline import config_from_dict, run_pipeline
from featpipe.pipeline.jobs import Job, config_hash
from featpipe.pipeline.stages import STAGES, register_stage
from featpipe.report import MethodKind, read_results
from featpipe.report.results import Predictions


def _majority_stage() -> types.ModuleType:
    """A toy stage: predict the most frequent training class, once per seed."""
    stage = types.ModuleType("majority")

    def plan(config, data):
        settings = {"data": data.fingerprint}
        return [
            Job("majority", "majority", MethodKind.PROBE, "majority class", "none", seed,
                config_hash(settings))
            for seed in config.seeds
        ]  # fmt: skip

    def run(job, context):
        source = context.source
        labels = np.asarray(source.labels)
        guess = np.bincount(labels[source.indices("train")]).argmax()
        test = source.indices("test")
        y = labels[test]
        proba = np.eye(len(source.classes))[np.full(len(test), guess)]
        return context.row(
            job,
            classes=list(source.classes),
            metrics=context.metrics(y, proba, source.classes, job.seed),
            val_accuracy=None,
            params={"class": int(guess)},
            cost=Cost.of(Usage(), fit_seconds=0.0, predict_seconds=0.0, n_test=len(y),
                         trainable_params=0),
            test=Predictions.of([source.ids[i] for i in test], y, proba.argmax(axis=1)),
            provenance={},
        )  # fmt: skip

    stage.plan, stage.run = plan, run
    return stage


@pytest.fixture
def majority():
    register_stage("majority", _majority_stage())
    yield
    STAGES.remove("majority")


def test_a_registered_stage_writes_its_rows(majority, tmp_path):
    raw = {
        "seeds": [0, 1],
        "n_boot": 40,
        "device": "cpu",
        "out": str(tmp_path / "run"),
        "source": {"data": "digits", "limits": {"train": 60, "test": 40}},
        "features": {"backbones": ["toy"], "cache_dir": str(tmp_path / "cache")},
        "probes": {"heads": ["knn"], "grids": {"knn": {"n_neighbors": [1]}}},
    }
    out = run_pipeline(config_from_dict(raw), progress=False, log=lambda _: None)
    rows = read_results(out / "results.jsonl")
    assert [(r["method"], r["seed"]) for r in rows] == [
        ("toy/knn@pooled", 0),  # built-in stages first, then the new one
        ("majority", 0),
        ("majority", 1),
    ]
    assert rows[1]["provenance"]["source"]["fingerprint"]  # the run's provenance, shared
    assert "| majority class | 0, 1 (identical) |" in (out / "report.md").read_text()


def test_a_stage_name_is_taken_once(majority):
    with pytest.raises(ConfigError, match="already registered"):
        register_stage("majority", _majority_stage())
