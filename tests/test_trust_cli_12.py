"""The command line's refusals name what it takes: a switch's flag for a boolean setting, --force
alone, the store key when a re-extracted store file holds a saved head, and the arguments that
predict needs by the names --help gives them."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from conftest import random_images_store

import featpipe
from featpipe.cli import _chosen, as_flags, build_parser, main


def _command(name: str) -> argparse.ArgumentParser:
    return _chosen(build_parser(), argparse.Namespace(command=name))


def test_a_boolean_setting_is_its_switch_or_stays_as_it_was():
    """overwrite=True became '--overwrite True', which argparse refuses."""
    extract, finetune = _command("extract"), _command("finetune")
    assert as_flags("Pass overwrite=True to replace it.", extract) == (
        "Pass --overwrite to replace it."
    )
    assert as_flags("Run again with resume=False.", finetune) == "Run again with --no-resume."
    assert as_flags("Or pass progress=False.", extract) == "Or pass --no-progress."
    # No --no-overwrite, and no flag for True of a --no- switch: the setting stays.
    for message in ("Pass overwrite=False.", "Pass resume=True."):
        assert as_flags(message, extract if "overwrite" in message else finetune) == message


def test_a_flag_is_not_followed_by_its_api_spelling():
    command = argparse.ArgumentParser()
    command.add_argument("--force", action="store_true")
    command.add_argument("--on-error")
    assert as_flags("x exists; pass --force (force=True) to replace it.", command) == (
        "x exists; pass --force to replace it."
    )
    assert as_flags('Pass --on-error skip (on_error="skip").', command) == ("Pass --on-error skip.")
    # Another flag or value before the parentheses: as it was.
    for message in ('Pass --on-error fail (on_error="skip").', "--out (force=False)"):
        assert as_flags(message, command) == message


def test_probe_out_refusal_names_force_alone(tmp_path, capsys):
    """probe and predict have no force= parameter: '(force=True)' was noise there."""
    store = random_images_store(tmp_path, "float32")[1].path
    out = tmp_path / "results.json"
    out.write_text("kept\n")
    assert main(["probe", str(store), "--heads", "knn", "--cv", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "results.json exists; pass --force to replace it." in err and "force=" not in err


def test_a_head_from_the_same_store_file_extracted_again_names_the_store_keys(tmp_path, capsys):
    """It said 'from store .../s.h5, layer pooled, not from this store's layer pooled'."""
    images, first = random_images_store(tmp_path, "float32")
    heads = tmp_path / "heads"
    probe = ["probe", str(first.path), "--heads", "knn", "--cv", "2", "--save-dir", str(heads)]
    assert main(probe) == 0
    again = featpipe.extract(
        featpipe.ArraySource(images, np.arange(10) % 2), "toy", out=first.path, dtype="float16",
        device="cpu", workers=0, progress=False, overwrite=True,
    )  # fmt: skip
    assert again.key != first.key
    capsys.readouterr()
    assert main(probe) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert (
        f"holds a head saved from store {first.path} before it was extracted again "
        f"(store key {first.key}, now {again.key}); saving here would replace it." in err
    )
    assert main([*probe, "--force"]) == 0


def test_a_head_from_another_store_and_layer_names_both(tmp_path, capsys):
    a = random_images_store(tmp_path / "a", "float32")[1]
    b = featpipe.extract(
        featpipe.ArraySource(np.zeros((10, 40, 30, 3), np.uint8), np.arange(10) % 2), "toy",
        out=tmp_path / "b.h5", layers=["pooled", "stage2:avg"], device="cpu", workers=0,
        progress=False,
    )  # fmt: skip
    heads = tmp_path / "heads"
    assert (
        main(["probe", str(a.path), "--heads", "knn", "--cv", "2", "--save-dir", str(heads)]) == 0
    )
    capsys.readouterr()
    argv = ["probe", str(b.path), "--layer", "stage2:avg", "--heads", "knn", "--cv", "2"]
    assert main([*argv, "--save-dir", str(heads)]) == 2
    assert (
        f"from store {a.path}, layer pooled, not from this store {b.path}, layer stage2:avg; "
        in capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("argv", "names"), [(["predict"], "HEAD, INPUT"), (["predict", "h.skops"], "INPUT")]
)
def test_predict_without_its_arguments_names_them_as_help_does(argv, names, capsys):
    """It said 'required: head, inputs', dest names --help never shows."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err == f"featpipe predict: error: the following arguments are required: {names}\n"


def test_predict_help_shows_the_same_names(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    assert "HEAD INPUT [INPUT ...]" in capsys.readouterr().out
