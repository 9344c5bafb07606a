"""A probe's finished row is reused only on features computed as the run computes them now.

Its config hash leaves out the precision and decode path of the extraction (the device
decides them: fp32 and Pillow on the CPU, bf16 or fp16 autocast and nvJPEG on CUDA), which
the store key includes. A CPU-made run folder re-run on CUDA reused the CPU rows without
extracting. Here a device that computes in bf16 is simulated by the extraction's precision."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import toy_backbone  # noqa: F401  (registers the 'toy' backbone)
from conftest import digits_config

from featpipe.pipeline import config_from_dict, run_pipeline
from featpipe.report import RESULTS_FILE

LOOP = importlib.import_module("featpipe.extract.loop")  # featpipe.extract.extract hides it


def run(config) -> list[str]:
    said: list[str] = []
    run_pipeline(config, progress=False, log=said.append)
    return said


def rows(config) -> list[dict]:
    path = f"{config.out}/{RESULTS_FILE}"
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def on_bf16_device(monkeypatch) -> None:
    """Extraction computes as under a CUDA device's bf16 autocast (as the store records it)."""
    monkeypatch.setattr(LOOP, "precision", lambda device, dtype: "bf16")


def test_a_probe_row_is_not_reused_on_features_computed_otherwise(tmp_path, monkeypatch):
    # Before: the second run said "1 already finished", reused the fp32 row and extracted
    # nothing, so the report showed CPU numbers as the bf16 run's.
    config = digits_config(tmp_path, "d")
    run(config)
    on_bf16_device(monkeypatch)
    said = run(config)
    assert "d: 1 method run, 0 already finished" in said[1]
    assert any(
        "recomputing kNN on layer pooled (seed 0): its row was made on features computed "
        "otherwise (decode pil, precision fp32; now decode pil, precision bf16)" in line
        for line in said
    )
    first, second = rows(config)
    assert first["config_hash"] == second["config_hash"]  # the hash is unchanged
    assert first["provenance"]["store"]["key"] != second["provenance"]["store"]["key"]
    assert second["provenance"]["compute"] == {"precision": "bf16", "decode": "pil"}
    assert "1 already finished" in run(config)[0]  # the bf16 row is reused on bf16
    monkeypatch.undo()
    said = run(config)  # and the fp32 row on fp32 again (the bf16 report goes)
    assert "d: 1 method run, 1 already finished" in said[1]
    assert len(rows(config)) == 2


def test_rows_that_record_no_compute_are_reused_on_the_same_store_only(tmp_path, monkeypatch):
    # Rows written before rows recorded the store's compute (the README demo's), whose store
    # is gone, are reused while the run's store key is theirs, and recomputed when it is not.
    config = digits_config(tmp_path, "d")
    run(config)
    path = tmp_path / "run" / RESULTS_FILE
    old = [json.loads(line) for line in path.read_text().splitlines()]
    for row in old:
        row["provenance"].pop("compute", None)
    path.write_text("".join(json.dumps(row) + "\n" for row in old))
    Path(old[0]["provenance"]["store"]["path"]).unlink()  # gone: only its key tells
    assert "1 already finished" in run(config)[0]
    on_bf16_device(monkeypatch)
    said = run(config)
    assert "0 already finished" in said[1]
    assert any(f"store {old[0]['provenance']['store']['key']}, now " in line for line in said)


def test_a_store_of_more_layers_reuses_the_probe_rows_of_the_same_layer(tmp_path):
    # A new layer makes a new store (its key covers the layers), whose pooled features are
    # those of the old one: the pooled rows, which record the same compute, are reused.
    config = digits_config(tmp_path, "d")
    run(config)
    raw = json.loads((tmp_path / "run" / "config.json").read_text())
    raw["features"]["layers"] = raw["probes"]["layers"] = ["pooled", "stage1:avg"]
    said = run(config_from_dict(raw))
    assert "d: 2 method runs, 1 already finished" in said[0]
    assert "reusing finished kNN on layer pooled (seed 0)" in said
