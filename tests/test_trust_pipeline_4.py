"""`featpipe run` reuses a finished row only if its backbone is the same: config hashes leave
out the backbone's identity (weights sha256, preprocessing, pooling), which changes under one
spec when a weights file is rewritten or a release fixes a model's preprocessing."""

from __future__ import annotations

import hashlib
import json

import torch
import toy_backbone
from conftest import digits_config

from featpipe.backbones import Backbone, Preprocessing, register_backbone, unregister_backbone
from featpipe.backbones.registry import _BUILTINS
from featpipe.backbones.weights import build_from_file
from featpipe.pipeline import run_pipeline
from featpipe.report import read_results
from featpipe.report.runplan import read_plan


def pipeline(tmp_path, backbone: str):
    finetune = {"backbones": [backbone], "modes": ["head"], "epochs": 1, "workers": 0}
    return digits_config(tmp_path, "same", finetune=finetune, backbones=[backbone])


def run(config) -> list[str]:
    said: list[str] = []
    run_pipeline(config, progress=False, log=said.append)
    return said


def reported(config) -> list[dict]:
    """The rows a report of the run folder uses."""
    rows = read_results(f"{config.out}/results.jsonl")
    return read_plan(config.out).select(rows)[0]


def test_a_row_made_by_another_version_of_its_backbone_preprocessing_is_recomputed(
    tmp_path, monkeypatch
):
    # Before: both rows were reused and the report showed numbers from features made with
    # the old preprocessing (the probe's store had a new key, the row the old one).
    config = pipeline(tmp_path, "toy")
    run(config)
    old = {r["method"]: r for r in read_results(f"{config.out}/results.jsonl")}

    def fixed(spec):  # a release fixes the model's resize
        backbone = toy_backbone.build_toy(spec)
        backbone.preprocessing = Preprocessing(resize=40, crop=32)
        return backbone

    monkeypatch.setitem(_BUILTINS._entries, "toy", fixed)
    said = run(config)
    recomputed = [line for line in said if line.startswith("recomputing")]
    assert len(recomputed) == 2, said
    assert all("another version of backbone toy (changed since: preprocessing)" in line
               for line in recomputed)  # fmt: skip
    rows = reported(config)
    assert len(rows) == 2 and len(read_results(f"{config.out}/results.jsonl")) == 4
    for row in rows:
        assert row["provenance"]["backbone"]["preprocessing"]["resize"] == 20  # 40 at 16 px
    probe, tuned = (next(r for r in rows if r["kind"] == kind) for kind in ("probe", "finetune"))
    assert probe["provenance"]["store"]["key"] != old[probe["method"]]["provenance"]["store"]["key"]
    # The fine-tune trained again, in a folder of its own: resuming the old preprocessing's
    # last.pt gave back the old history (its epochs' seconds included) under the new identity.
    assert tuned["history"] != old[tuned["method"]]["history"]
    assert len(list((tmp_path / "run" / "finetune").iterdir())) == 2

    # Unchanged since: both reused, nothing appended.
    said = run(config)
    assert sum(line.startswith("reusing finished") for line in said) == 2, said
    assert len(read_results(f"{config.out}/results.jsonl")) == 4


def build_toy_file(spec) -> Backbone:
    model, sha, path = build_from_file(toy_backbone.ToyNet, spec.weights)
    return Backbone(
        spec=f"toyfile@{path}",
        model=model,
        preprocessing=Preprocessing(resize=36, crop=32),
        weights_sha256=sha,
        stages=["stem", "stage1", "stage2"],
    )


def test_a_weights_file_rewritten_under_the_same_path_is_recomputed(tmp_path):
    # Before: the rows of the old weights were reused; the spec string is all the hash saw.
    register_backbone("toyfile", replace=True)(build_toy_file)
    try:
        weights = tmp_path / "w.pth"
        torch.manual_seed(0)
        torch.save(toy_backbone.ToyNet().state_dict(), weights)
        config = pipeline(tmp_path, f"toyfile@{weights}")
        run(config)
        torch.manual_seed(1)  # trained again, saved to the same path
        torch.save(toy_backbone.ToyNet().state_dict(), weights)
        said = run(config)
    finally:
        unregister_backbone("toyfile")
    assert sum("(changed since: weights_sha256)" in line for line in said) == 2, said
    rows = reported(config)
    assert len(rows) == 2
    assert {r["provenance"]["backbone"]["weights_sha256"] for r in rows} == {
        hashlib.sha256(weights.read_bytes()).hexdigest()
    }


def test_reports_use_only_rows_of_the_planned_backbone(tmp_path):
    # An interrupted re-run leaves the old row the only one of its key: `featpipe report`
    # must not show it as current.
    from featpipe.report.runplan import PlannedRun, RunPlan, identity_hash, write_plan

    made = {"spec": "toy", "weights_sha256": "a", "preprocessing": {"resize": 36}}
    now = {**made, "preprocessing": {"resize": 40}}

    def row(identity):
        return {"method": "m", "seed": 0, "config_hash": "h", "provenance": {"backbone": identity}}

    plan = RunPlan("same", [PlannedRun("m", 0, "h", backbone=identity_hash(now))])
    assert plan.select([row(made)]) == ([], plan.methods, 1)
    assert plan.select([row(made), row(now)])[0] == [row(now)]
    assert plan.select([row(now), row(made)])[0] == [row(now)]  # a version switched back
    # A row that records no backbone (none written by featpipe) cannot be checked: used.
    assert plan.select([row(None)])[0] == [row(None)]
    # A plan without backbones (older plan.json, `featpipe probe --run-dir`): the last row.
    unchecked = RunPlan("same", [PlannedRun("m", 0, "h")])
    assert unchecked.select([row(now), row(made)])[0] == [row(made)]
    write_plan(tmp_path, plan)
    assert read_plan(tmp_path) == plan
    assert "backbone" not in json.dumps(RunPlan("same", [PlannedRun("m", 0, "h")]).to_json())
