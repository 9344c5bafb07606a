"""A fine-tune's finished row is reused only where the run computes as it did.

Its config hash leaves out the precision it trains at (and its LP-FT probe reads features
at): fp32 on the CPU, bf16 or fp16 autocast on CUDA. A CPU-made run folder re-run on CUDA
reused the CPU's fine-tune and LP-FT rows. Here a device that computes in bf16 is simulated
by the precision extraction and the fine-tune's probe report (as in test_trust_pipeline_17)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import toy_backbone  # noqa: F401  (registers the 'toy' backbone)
from conftest import digits_config

from featpipe.pipeline import run_pipeline
from featpipe.report import RESULTS_FILE

LOOP = importlib.import_module("featpipe.extract.loop")  # featpipe.extract.extract hides it
FINETUNE = {"modes": ["lpft", "head"], "epochs": 1, "workers": 0, "batch_size": 16}


def run(config) -> list[str]:
    said: list[str] = []
    run_pipeline(config, progress=False, log=said.append)
    return said


def rows(config) -> list[dict]:
    lines = Path(config.out, RESULTS_FILE).read_text().splitlines()
    return [row for row in map(json.loads, lines) if row["kind"] == "finetune"]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_fine_tune_row_is_not_reused_where_the_run_computes_otherwise(tmp_path, monkeypatch):
    # Before: the bf16 run said "reusing finished fine-tuning (lpft)" and "(head)": the CPU's
    # fp32 rows (the LP-FT's probe fitted on the fp32 store) stood as the bf16 run's.
    config = digits_config(tmp_path, "d", finetune=FINETUNE)
    run(config)
    monkeypatch.setattr(LOOP, "precision", lambda device, dtype: "bf16")
    said = run(config)
    assert "d: 3 method runs, 0 already finished" in said[1]
    for mode in ("lpft", "head"):
        assert any(
            f"recomputing fine-tuning ({mode}) (seed 0): its row was made by training "
            "otherwise (decode pil, precision fp32; now decode pil, precision bf16)" in line
            for line in said
        )
    first, second = rows(config)[:2], rows(config)[2:]
    assert [r["config_hash"] for r in first] == [r["config_hash"] for r in second]
    assert [r["provenance"]["compute"]["precision"] for r in first + second] == [
        *("fp32", "fp32", "bf16", "bf16")
    ]
    # Each trained afresh beside the fp32 checkpoints (not a restore of the fp32 weights).
    assert len(list(Path(config.out, "finetune").iterdir())) == 4
    assert "3 already finished" in run(config)[0]  # the bf16 rows are reused on bf16
    monkeypatch.undo()
    assert "3 already finished" in run(config)[1]  # and the fp32 rows on fp32
    assert len(rows(config)) == 4


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_fine_tune_rows_that_record_no_compute_are_reused_as_before(tmp_path, monkeypatch):
    # Rows written before rows recorded compute (the README demo's fine-tunes): a fine-tune
    # that read no store is reused, an LP-FT probe's is while the run's store key is its.
    config = digits_config(tmp_path, "d", finetune=FINETUNE)
    run(config)
    path = Path(config.out, RESULTS_FILE)
    old = [json.loads(line) for line in path.read_text().splitlines()]
    for row in old:
        row["provenance"].pop("compute", None)
    path.write_text("".join(json.dumps(row) + "\n" for row in old))
    assert "3 already finished" in run(config)[0]
    monkeypatch.setattr(LOOP, "precision", lambda device, dtype: "bf16")
    said = run(config)
    assert "d: 3 method runs, 1 already finished" in said[1]
    assert "reusing finished fine-tuning (head) (seed 0)" in said
    assert any("recomputing fine-tuning (lpft) (seed 0)" in line for line in said)
