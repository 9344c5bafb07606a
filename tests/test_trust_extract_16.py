"""The store key a run plans for its probe rows (pipeline/stages/extract.planned_store) is the
key its extraction writes: both come from one extract.extractor.store_request, for a few
settings of the features section (layers, image size, decode, dtype)."""

from __future__ import annotations

import json

import pytest
import toy_backbone  # noqa: F401  (registers the 'toy' backbone)
from conftest import digits_config

from featpipe.pipeline import config_from_dict, run_pipeline
from featpipe.report import RESULTS_FILE

RUNNER = __import__("featpipe.pipeline.runner", fromlist=["planned_store"])

SETTINGS = [
    {},
    {"layers": ["pooled", "stage1:avg"]},
    {"image_size": 24},
    {"decode": "fast"},
    {"dtype": "float32"},
]


@pytest.mark.parametrize("features", SETTINGS, ids=lambda f: ",".join(f) or "defaults")
def test_the_planned_store_is_the_store_extraction_writes(tmp_path, monkeypatch, features):
    raw = digits_config(tmp_path, "d").to_json()
    raw["features"].update(features)
    config = config_from_dict(raw)
    run_pipeline(config, progress=False, log=lambda line: None)
    planned = []

    def spy(context, backbone, built):
        planned.append(real(context, backbone, built))
        return planned[-1]

    real = RUNNER.planned_store
    monkeypatch.setattr(RUNNER, "planned_store", spy)
    said = []
    run_pipeline(config, progress=False, log=said.append)
    assert "already finished" in said[0]
    written = [
        json.loads(line) for line in (tmp_path / "run" / RESULTS_FILE).read_text().splitlines()
    ]
    assert planned and written
    for row in written:
        assert row["provenance"]["store"]["key"] == planned[0]["key"]
        assert row["provenance"]["compute"] == planned[0]["compute"]
