"""Pipeline trust checks, session 18: the n_boot default's one home, and a run saying why it
re-fits rows that an older featpipe keyed on another n_boot."""

from __future__ import annotations

import json

import pytest
import toy_backbone  # noqa: F401  (registers the 'toy' backbone)
from conftest import record_calls

import featpipe.heads
import featpipe.pipeline.config as config_module
from featpipe.evaluate.metrics import DEFAULT_BOOT
from featpipe.pipeline import config_from_dict, run_pipeline
from featpipe.pipeline.config import PipelineConfig
from featpipe.pipeline.jobs import HASHED_N_BOOT
from featpipe.pipeline.stages import finetune as finetune_stage
from featpipe.pipeline.stages import probe as probe_stage
from featpipe.report.runplan import RunPlan

SAID = "which older featpipe versions keyed jobs on"


def _config(tmp_path, n_boot: int, finetune: dict | None = None, **source):
    """kNN (deterministic: one job per size) on the toy backbone, and ``finetune``."""
    return config_from_dict({
        "name": "old", "out": str(tmp_path / "run"), "device": "cpu", "n_boot": n_boot,
        "source": {"data": "digits", "limits": {"train": 60, "val": 30, "test": 30}, **source},
        "features": {"backbones": ["toy"], "image_size": 16, "workers": 0,
                     "cache_dir": str(tmp_path / "cache")},
        "probes": {"heads": ["knn"]},
        **({"finetune": finetune} if finetune else {}),
    })  # fmt: skip


def _run(config) -> list[str]:
    lines: list[str] = []
    run_pipeline(config, progress=False, log=lines.append)
    return lines


def _run_as_older_featpipe(tmp_path, monkeypatch, n_boot: int, finetune=None, **source) -> None:
    """A run folder as featpipe made it when job hashes held the run's n_boot: its rows are
    hashed at ``n_boot`` and do not record metrics.n_boot (added later)."""
    with monkeypatch.context() as patched:
        patched.setattr(probe_stage, "HASHED_N_BOOT", {"n_boot": n_boot})
        patched.setattr(finetune_stage, "HASHED_N_BOOT", {"n_boot": n_boot})
        _run(_config(tmp_path, n_boot, finetune, **source))
    results = tmp_path / "run" / "results.jsonl"
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    for row in rows:
        del row["metrics"]["n_boot"]
    results.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.mark.parametrize(
    ("source", "said"),
    [
        ({}, "1 probe row was made with n_boot 500, " + SAID + "; re-fitting it once"),
        # a size sweep: each size's hash is made from the method's, n_boot included
        (
            {"train_sizes": [20, 40]},
            "2 probe rows were made with n_boot 500, " + SAID + "; re-fitting them once",
        ),
    ],
)
def test_rows_keyed_on_an_older_n_boot_are_refit_once_and_the_run_says_why(
    tmp_path, monkeypatch, source, said
):
    # Before: the run re-fitted these rows and said only "0 already finished".
    _run_as_older_featpipe(tmp_path, monkeypatch, 500, **source)
    fits = record_calls(monkeypatch, featpipe.heads, "select_and_fit")
    lines = _run(_config(tmp_path, 500, **source))
    assert said in lines
    assert len(fits) == (len(source["train_sizes"]) if source else 1)
    # once: the next run reuses the new rows and says nothing of n_boot
    fits.clear()
    again = _run(_config(tmp_path, 500, **source))
    assert fits == [] and not any(SAID in line for line in again)


def test_fine_tunes_keyed_on_an_older_n_boot_are_named_too(tmp_path, monkeypatch):
    # Before: probes were named, fine-tunes re-trained without a word.
    finetune = {"modes": ["head"], "epochs": 1, "batch_size": 16, "image_size": 16}
    _run_as_older_featpipe(tmp_path, monkeypatch, 500, finetune)
    lines = _run(_config(tmp_path, 500, finetune))
    assert "1 fine-tune row was made with n_boot 500, " + SAID + "; re-fitting it once" in lines
    again = _run(_config(tmp_path, 500, finetune))
    assert not any(SAID in line for line in again)


def test_a_row_that_differs_in_more_than_n_boot_is_refit_without_the_n_boot_line(
    tmp_path, monkeypatch
):
    _run_as_older_featpipe(tmp_path, monkeypatch, 500)
    config = _config(tmp_path, 500)
    grid = {"n_neighbors": [1, 3]}  # another head setting: not only n_boot changed
    lines = _run(
        config_from_dict({**config.to_json(), "probes": {"heads": ["knn"], "grids": {"knn": grid}}})
    )
    assert not any(SAID in line for line in lines)


def test_the_n_boot_default_has_one_home_and_job_hashes_keep_1000():
    assert PipelineConfig.__dataclass_fields__["n_boot"].default == DEFAULT_BOOT
    assert RunPlan("run", []).n_boot == DEFAULT_BOOT
    # the pipeline file's documented default is the same number
    assert f"n_boot = {DEFAULT_BOOT} " in config_module.__doc__
    # rows made at the default of then keep their hashes whatever the default becomes
    assert HASHED_N_BOOT == {"n_boot": 1000}
