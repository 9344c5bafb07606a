"""Each caller reads a hint in its own words: Python the parameter, the command line its flag
(one featpipe.cli.as_flags for every command), a pipeline its file's key."""

from __future__ import annotations

import argparse
import json

import pytest
import toy_backbone  # noqa: F401  (registers 'toy')
from conftest import make_image_folder

import featpipe
from featpipe.cli import as_flags, main
from featpipe.errors import ImageReadError
from featpipe.pipeline import config_from_dict, run_pipeline

BROKEN = "test/cat/001.jpg"


@pytest.fixture
def broken_folder(tmp_path):
    root = make_image_folder(tmp_path / "images", per_class=4, splits=("train", "val", "test"))
    (root / BROKEN).write_bytes((root / BROKEN).read_bytes()[:300])  # truncated
    return root


def test_as_flags_gives_a_rule_and_a_setting_as_the_commands_flags():
    command = argparse.ArgumentParser()
    command.add_argument("--patience", type=int)
    command.add_argument("--on-error")
    assert as_flags("patience must be >= 0 or None (patience 0 or None)", command) == (
        "--patience must be >= 0 or left out (--patience 0 or left out)"
    )
    assert as_flags('Stopped. To go on, pass on_error="skip".', command) == (
        "Stopped. To go on, pass --on-error skip."
    )
    # Not one of the command's options, not a rule, or the flag already named: as it was.
    for message in ("seed must be >= 0", "patience is 3", 'on_error="skip" (--on-error skip)'):
        assert as_flags(message, command) == message


def test_a_store_that_left_images_out_is_refused_in_each_callers_words(
    image_folder, tmp_path, capsys
):
    """The refusal said '--on-error skip (on_error="skip")' to Python and command line alike."""
    broken = image_folder / "cat" / "001.jpg"
    broken.write_bytes(broken.read_bytes()[:300])  # truncated
    out = tmp_path / "s.h5"
    options = {"out": out, "device": "cpu", "workers": 0, "progress": False}
    featpipe.extract(str(image_folder), "toy", on_error="skip", **options)
    with pytest.raises(ImageReadError) as caught:
        featpipe.extract(str(image_folder), "toy", **options)
    said = str(caught.value)
    assert 'Pass on_error="skip" to use it as it is' in said and "--on-error" not in said
    argv = ["extract", str(image_folder), "--backbone", "toy", "--workers", "0", "--out", str(out)]
    assert main([*argv, "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Pass --on-error skip to use it as it is" in err and 'on_error="skip"' not in err


def test_a_pipeline_names_the_key_of_its_file(broken_folder, tmp_path, capsys):
    """A pipeline was told 'pass on_error="skip"', a parameter it has no place for."""
    raw = {
        "name": "hint", "n_boot": 40, "device": "cpu", "out": str(tmp_path / "run"),
        "source": {"data": str(broken_folder)},
        "features": {"backbones": ["toy"], "batch_size": 8, "workers": 0,
                     "cache_dir": str(tmp_path / "c")},
        "probes": {"heads": ["knn"]},
    }  # fmt: skip
    with pytest.raises(ImageReadError) as caught:
        run_pipeline(config_from_dict(raw), progress=False, log=lambda _: None)
    said = str(caught.value)
    assert f"{BROKEN}': truncated file" in said and caught.value.path.endswith("001.jpg")
    assert 'pass features.on_error = "skip".' in said and 'on_error="skip"' not in said
    toml = tmp_path / "hint.toml"
    toml.write_text(
        f"name = 'hint'\nn_boot = 40\ndevice = 'cpu'\nout = {json.dumps(str(tmp_path / 'r'))}\n"
        f"[features]\nbackbones = ['toy']\nworkers = 0\n"
        f"cache_dir = {json.dumps(str(tmp_path / 'c2'))}\n[probes]\nheads = ['knn']\n"
    )
    assert main(["run", str(toml), "--data", str(broken_folder), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert 'pass features.on_error = "skip".' in err and "--on-error" not in err
