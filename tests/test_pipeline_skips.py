"""Unreadable images in `featpipe run`: fail with one line, or leave them out of every method."""

from __future__ import annotations

from dataclasses import replace

import pytest
from conftest import make_image_folder

from featpipe.cli import main
from featpipe.errors import ConfigError, ImageReadError
from featpipe.pipeline import config_from_dict, run_pipeline
from featpipe.report import ids_sha256, read_results
from featpipe.store import FeatureStore

BROKEN = ("test/cat/001.jpg", "train/dog/002.jpg")
TOML = """
name = "skips"
seeds = [0]
n_boot = 40
device = "cpu"
[features]
backbones = ["toy"]
batch_size = 8
cache_dir = "{cache}"
[probes]
heads = ["logreg"]
grids.logreg = {{ C = [1.0] }}
[finetune]
modes = ["head"]
epochs = 1
batch_size = 8
"""


@pytest.fixture
def broken_folder(tmp_path):
    root = make_image_folder(tmp_path / "images", per_class=4, splits=("train", "val", "test"))
    for name in BROKEN:
        (root / name).write_bytes((root / name).read_bytes()[:300])  # truncated
    return root


def _config(tmp_path, data, **features):
    raw = {
        "name": "skips",
        "seeds": [0],
        "n_boot": 40,
        "device": "cpu",
        "out": str(tmp_path / "run"),
        "source": {"data": str(data)},
        "features": {"backbones": ["toy"], "batch_size": 8, "cache_dir": str(tmp_path / "c")},
        "probes": {"heads": ["logreg"], "grids": {"logreg": {"C": [1.0]}}},
        "finetune": {"modes": ["head"], "epochs": 1, "batch_size": 8},
    }
    raw["features"].update(features)
    return config_from_dict(raw)


def test_on_error_is_validated():
    base = {"source": {"data": "digits"}, "features": {"backbones": ["toy"]}}
    assert config_from_dict(base).features.on_error == "fail"
    with pytest.raises(ConfigError, match=r"features.on_error: unknown on_error 'ignore'"):
        config_from_dict({**base, "features": {"backbones": ["toy"], "on_error": "ignore"}})


def test_probes_and_finetunes_leave_out_the_same_images(broken_folder, tmp_path, capsys):
    toml = tmp_path / "skips.toml"
    toml.write_text(TOML.format(cache=tmp_path / "cache"))
    out = tmp_path / "run"
    argv = ["run", str(toml), "--data", str(broken_folder), "--out", str(out), "--quiet"]
    assert main([*argv, "--on-error", "skip"]) == 0
    assert "fine-tuning leaves out 2 unreadable images" in capsys.readouterr().out
    probe, tune = read_results(out / "results.jsonl")
    assert probe["kind"] == "probe" and tune["kind"] == "finetune"
    # paired: the same 11 test images (12 minus the broken one) for both methods
    assert probe["test"]["ids_sha256"] == tune["test"]["ids_sha256"]
    assert len(probe["test"]["y_true"]) == len(tune["test"]["y_true"]) == 11
    assert probe["metrics"]["n"] == tune["metrics"]["n"] == 11
    for row in (probe, tune):
        assert row["provenance"]["skipped"] == {
            "count": 2,
            "first": {name: "truncated file" for name in BROKEN},
        }
    store = FeatureStore(probe["provenance"]["store"]["path"])
    assert probe["test"]["ids_sha256"] == ids_sha256(store.ids("test"))
    assert store.extraction is None and store.attrs["extraction"]["skipped"] == 2
    report = (out / "report.md").read_text()
    assert "Every method leaves out 2 unreadable images" in report
    assert all(f"{name} (truncated file)" in report for name in BROKEN)


def test_finetune_alone_finds_the_same_images_by_decoding(broken_folder, tmp_path):
    config = _config(tmp_path, broken_folder, on_error="skip")
    config = replace(config, probes=replace(config.probes, heads=()))  # no store: decode instead
    tune = read_results(run_pipeline(config, progress=False, log=lambda _: None) / "results.jsonl")
    (row,) = tune
    assert row["provenance"]["skipped"]["count"] == 2
    ids = [i for i in _test_ids(broken_folder) if i not in BROKEN]
    assert row["test"]["ids_sha256"] == ids_sha256(ids)


def _test_ids(root) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in (root / "test").rglob("*.jpg"))


@pytest.mark.parametrize("heads", [["logreg"], []])
def test_fail_stops_with_one_line_before_training(broken_folder, tmp_path, heads):
    config = _config(tmp_path, broken_folder)
    config = replace(config, probes=replace(config.probes, heads=tuple(heads)))
    with pytest.raises(ImageReadError) as caught:
        run_pipeline(config, progress=False, log=lambda _: None)
    message = str(caught.value)
    assert "\n" not in message and 'features.on_error = "skip"' in message
    assert "test/cat/001.jpg': truncated file" in message  # the first broken row
    assert not read_results(tmp_path / "run" / "results.jsonl")
