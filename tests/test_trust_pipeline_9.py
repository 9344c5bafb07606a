"""A pipeline's declarations mean what they say: one fine-tuning mode written two ways is
refused, a grid for a head the pipeline does not run is warned of, and a fine-tune recomputed
over other left-out images is announced as such; a partial:N fine-tune is not reused, nor its
checkpoint resumed, once its backbone's stage list freezes other modules."""

from __future__ import annotations

import json

import pytest
import toy_backbone  # noqa: F401  (registers the 'toy' backbone)
from conftest import (
    STAGES,
    digits_config,
    make_image_folder,
    register_staged_toy,
    register_white_nan,
)
from PIL import Image

from featpipe.errors import ConfigError
from featpipe.pipeline import config_from_dict, run_pipeline
from featpipe.report import read_results
from featpipe.report.runplan import read_plan


def pipeline(tmp_path, probes: dict | None = None, **finetune):
    return digits_config(tmp_path, "nine", probes, {"workers": 0, **finetune})


@pytest.mark.parametrize(
    ("modes", "match"),
    [
        (["partial:2", "partial:02"], r"finetune.modes\[1\] = 'partial:02' is the mode of "
         r"finetune.modes\[0\] = 'partial:2' \('partial:2'\); list each mode once"),
        (["full", "head", " full"], r"finetune.modes\[2\] = ' full' is the mode of "
         r"finetune.modes\[0\] = 'full'"),
    ],
)  # fmt: skip
def test_one_mode_written_two_ways_is_refused(tmp_path, modes, match):
    # Before: both passed the duplicate check (it compares the text) and parse to one mode,
    # so the same fine-tune trained twice, as 'fine-tuning (partial:2)' and
    # 'fine-tuning (partial:02)', two methods of the report.
    with pytest.raises(ConfigError, match=match):
        pipeline(tmp_path, modes=modes)


def test_a_grid_for_a_head_the_pipeline_does_not_run_is_warned_of(tmp_path):
    # Before: the logreg grid (a typo'd or forgotten head) was ignored without a word.
    grids = {"knn": {"n_neighbors": [1]}, "logreg": {"C": [1.0]}, "mlp": {"alpha": [0.1]}}
    config = pipeline(tmp_path, {"heads": ["knn"], "grids": grids})
    with pytest.warns(UserWarning) as caught:
        run_pipeline(config, progress=False, log=lambda _: None)
    said = [str(w.message) for w in caught if "probes.grids" in str(w.message)]
    assert said == [
        "probes.grids.logreg, probes.grids.mlp are not used: the pipeline runs no such head "
        "(probes.heads: knn). Add the head to probes.heads, or remove its grid."
    ]


register_white_nan("toy_white_nan9")


def test_a_fine_tune_over_other_left_out_images_is_announced_so(tmp_path):
    # Before: "recomputing fine-tuning (head) (seed 0): its row was made by another version
    # of backbone toy (changed since: images_left_out)", though toy was the same.
    root = make_image_folder(tmp_path / "images", per_class=4, splits=("train", "val", "test"))
    Image.new("RGB", (20, 16), "white").save(root / "test/cat/001.jpg", quality=90)

    def run(feature_backbone: str) -> list[str]:
        config = config_from_dict({
            "name": "left-out", "n_boot": 40, "device": "cpu", "out": str(tmp_path / "run"),
            "source": {"data": str(root)},
            "features": {"backbones": [feature_backbone], "batch_size": 8,
                         "cache_dir": str(tmp_path / "c"), "on_error": "skip"},
            "probes": {"heads": ["knn"]},
            "finetune": {"backbones": ["toy"], "modes": ["head"], "epochs": 1, "batch_size": 8},
        })  # fmt: skip
        said: list[str] = []
        run_pipeline(config, progress=False, log=said.append)
        return [line for line in said if line.startswith("recomputing")]

    assert run("toy_white_nan9") == []
    assert run("toy") == [
        "recomputing fine-tuning (head) (seed 0): its row was made over other images: the "
        "feature stores leave out other images now; that row stays in results.jsonl as history"
    ]


register_staged_toy("toy_staged9")


def _partial(tmp_path, monkeypatch, stages: list, said: list[str]) -> dict:
    """Fine-tune toy_staged9 in partial:1 with its stages ``stages``; its row."""
    monkeypatch.setitem(STAGES, "toy_staged9", stages)
    config = config_from_dict({
        "name": "stages", "n_boot": 40, "device": "cpu", "out": str(tmp_path / "run"),
        "source": {"data": "digits", "limits": {"train": 60, "val": 30, "test": 30}},
        "features": {"backbones": ["toy_staged9"], "image_size": 16, "workers": 0,
                     "cache_dir": str(tmp_path / "c")},
        "probes": {"heads": []},
        "finetune": {"modes": ["partial:1"], "epochs": 1, "workers": 0},
    })  # fmt: skip
    out = run_pipeline(config, progress=False, log=said.append)
    current, missing, _ = read_plan(out).select(read_results(out / "results.jsonl"))
    assert not missing
    return current[0]


def test_a_partial_fine_tune_is_not_reused_after_the_stage_list_changed(tmp_path, monkeypatch):
    # Before: stages are not in the backbone's identity, so the fine-tune that froze the stem
    # was reused as the one that freezes stem and stage1 ("1 already finished"); without its
    # row, the checkpoint was resumed and stopped in a traceback (the optimiser's groups).
    said: list[str] = []
    row = _partial(tmp_path, monkeypatch, ["stem", "stage1", "stage2"], said)
    other = _partial(tmp_path, monkeypatch, [("stem", "stage1"), "stage2"], said)
    assert len(read_results(tmp_path / "run" / "results.jsonl")) == 2  # trained again
    assert (
        "recomputing fine-tuning (partial:1) (seed 0): its row was made with stem frozen, "
        "where the backbone's stages now freeze stem, stage1; that row stays in "
        "results.jsonl as history"
    ) in said
    assert other["config_hash"] == row["config_hash"]
    assert row["provenance"]["frozen"] == ["stem"]
    assert other["provenance"]["frozen"] == ["stem", "stage1"]
    # Its checkpoint is not resumed by the other stage list: each has a folder of its own.
    results = tmp_path / "run" / "results.jsonl"
    results.write_text(results.read_text().splitlines()[0] + "\n")
    again = _partial(tmp_path, monkeypatch, [("stem", "stage1"), "stage2"], said)
    assert again["provenance"]["frozen"] == ["stem", "stage1"]
    assert len(list((tmp_path / "run" / "finetune").iterdir())) == 2


def test_a_partial_fine_tune_row_that_records_no_frozen_modules_stays_valid(tmp_path, monkeypatch):
    # Rows written before rows recorded them are reused as before.
    row = _partial(tmp_path, monkeypatch, ["stem", "stage1", "stage2"], [])
    results = tmp_path / "run" / "results.jsonl"
    old = json.loads(results.read_text())
    old["provenance"].pop("frozen", None)
    results.write_text(json.dumps(old) + "\n")
    said: list[str] = []
    reused = _partial(tmp_path, monkeypatch, [("stem", "stage1"), "stage2"], said)
    assert "reusing finished fine-tuning (partial:1) (seed 0)" in said
    assert reused["test"] == row["test"] and len(results.read_text().splitlines()) == 1
