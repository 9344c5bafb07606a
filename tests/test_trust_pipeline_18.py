"""Probe rows written before rows recorded ``provenance.compute`` (every run folder made
before, the README demo's) are checked on the compute of the store they record while that
store is still at its path with their key: a change of features.layers (a new store key, the
same features of a layer) reuses them. Only where the store is gone is the key compared, and
a row of another key is said to be made "on another feature store"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_trust_pipeline_17 import on_bf16_device, rows, run

from featpipe.pipeline import config_from_dict
from featpipe.report import RESULTS_FILE


def without_compute(config) -> dict:
    """The run's rows as rows written before rows recorded compute; the first row."""
    path = Path(config.out) / RESULTS_FILE
    old = rows(config)
    for row in old:
        row["provenance"].pop("compute", None)
    path.write_text("".join(json.dumps(row) + "\n" for row in old), encoding="utf-8")
    return old[0]


@pytest.fixture
def old_run(tmp_path):
    from conftest import digits_config

    config = digits_config(tmp_path, "d")
    run(config)
    return config, without_compute(config)


@pytest.mark.usefixtures("old_run")
def test_rows_without_compute_are_reused_when_only_the_layers_change(tmp_path):
    # Before: "recomputing kNN on layer pooled (seed 0): its row was made on features
    # computed otherwise (store ..., now ...)", although its pooled features are the same.
    raw = json.loads((tmp_path / "run" / "config.json").read_text())
    raw["features"]["layers"] = raw["probes"]["layers"] = ["pooled", "stage1:avg"]
    said = run(config_from_dict(raw))
    assert "d: 2 method runs, 1 already finished" in said[0]
    assert "reusing finished kNN on layer pooled (seed 0)" in said
    assert not any("recomputing" in line for line in said)


def test_rows_without_compute_are_recomputed_on_their_stores_compute(old_run, monkeypatch):
    # The store the row records is still there: the message names its compute.
    config, _ = old_run
    on_bf16_device(monkeypatch)
    said = run(config)
    assert "d: 1 method run, 0 already finished" in said[1]
    assert any(
        "its row was made on features computed otherwise (decode pil, precision fp32; now "
        "decode pil, precision bf16)" in line
        for line in said
    )


def test_rows_without_compute_whose_store_is_gone_are_said_made_on_another_store(
    old_run, monkeypatch
):
    # Only the key tells, and a key covers more than how features were computed.
    config, old = old_run
    Path(old["provenance"]["store"]["path"]).unlink()
    assert "1 already finished" in run(config)[0]  # the same key: reused
    on_bf16_device(monkeypatch)
    said = run(config)
    assert "d: 1 method run, 0 already finished" in said[1]
    key = old["provenance"]["store"]["key"]
    line = next(line for line in said if line.startswith("recomputing"))
    assert f"its row was made on another feature store (store {key}, now " in line
    assert "computed otherwise" not in line
