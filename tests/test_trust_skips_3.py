"""Rows skipped under ``on_error="skip"`` because the model gave NaN features are not called
unreadable images: the CLI, ``featpipe info``, the refusal under fail, the LP-FT probe check
and the report say why each was left out."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import WHITE, make_white_folder
from toy_backbone import ToyNet

from featpipe.backbones import get_backbone
from featpipe.cli import main
from featpipe.data import open_source
from featpipe.errors import ImageReadError, StoreMismatchError
from featpipe.extract import extract
from featpipe.finetune.probe import check_store
from featpipe.pipeline import config_from_dict, run_pipeline
from featpipe.report import read_results
from featpipe.report.content import _skipped_notes

TOY = ["--backbone", "toy", "--workers", "0", "--device", "cpu", "--no-progress"]
NAN = "its features are not finite (NaN in layer 'pooled')"


@pytest.fixture
def nan_on_white(monkeypatch):
    """Every toy model gives NaN features for white images (and only for them)."""
    forward = ToyNet.forward

    def nan_where_white(self, x):
        white = x.flatten(1).mean(1) > 2.3  # normalised white; the random images stay below 2
        return forward(self, torch.where(white[:, None, None, None], torch.nan, x))

    monkeypatch.setattr(ToyNet, "forward", nan_where_white)


@pytest.fixture
def folder(tmp_path):
    return make_white_folder(tmp_path / "images")


def _truncate(root, name="val/fox/003.jpg"):
    (root / name).write_bytes((root / name).read_bytes()[:300])


def test_extract_and_info_say_the_features_are_not_finite(nan_on_white, folder, tmp_path, capsys):
    out = tmp_path / "s.h5"
    args = ["extract", str(folder), *TOY, "--out", str(out), "--on-error", "skip"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert f"skipped 2 images with non-finite features; `featpipe info {out}` lists them" in text
    assert "unreadable" not in text

    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "skipped     2 images with non-finite features, left out of every split:" in text
    assert f"  {WHITE[0]}: {NAN}\n  {WHITE[1]}: {NAN}\n" in text
    assert "unreadable" not in text
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["skipped"] == info["skipped_not_finite"] == 2

    assert main(args[:-2]) == 2  # fail refuses the store, naming why its rows were left out
    err = capsys.readouterr().err
    assert f"leaves out 2 images with non-finite features: {WHITE[0]} ({NAN})" in err
    assert "unreadable" not in err


def test_each_reason_is_counted_when_both_are_there(nan_on_white, folder, tmp_path, capsys):
    _truncate(folder)
    out = tmp_path / "s.h5"
    args = ["extract", str(folder), *TOY, "--out", str(out), "--on-error", "skip"]
    assert main(args) == 0
    both = "3 images (1 unreadable, 2 with non-finite features)"
    assert f"skipped {both}; `featpipe info {out}` lists them" in capsys.readouterr().out
    assert main(["info", str(out)]) == 0
    assert f"skipped     {both}, left out of every split:" in capsys.readouterr().out
    with pytest.raises(ImageReadError, match=rf"leaves out {re.escape(both)}: "):
        extract(str(folder), "toy", ["pooled"], out=out, workers=0, device="cpu", progress=False)


def test_the_probe_check_names_rows_with_non_finite_features(nan_on_white, folder, tmp_path):
    source = open_source(str(folder))
    store = extract(source, "toy", ["pooled"], out=tmp_path / "s.h5", on_error="skip",
                    workers=0, device="cpu", progress=False)  # fmt: skip
    with pytest.raises(StoreMismatchError) as caught:
        check_store(store, get_backbone("toy"), source)
    assert "it leaves out 2 images with non-finite features." in str(caught.value)


def _skipping_pipeline(folder, tmp_path, finetune: dict):
    """A toy pipeline over ``folder`` under on_error = "skip"."""
    return config_from_dict({
        "name": "skips", "seeds": [0], "n_boot": 40, "device": "cpu",
        "out": str(tmp_path / "run"), "source": {"data": str(folder)},
        "features": {"backbones": ["toy"], "batch_size": 8, "cache_dir": str(tmp_path / "c"),
                     "on_error": "skip"},
        "probes": {"heads": ["logreg"], "grids": {"logreg": {"C": [1.0]}}},
        "finetune": finetune,
    })  # fmt: skip


def test_the_report_says_the_features_were_not_finite(nan_on_white, folder, tmp_path):
    config = _skipping_pipeline(folder, tmp_path, {"modes": []})
    out = run_pipeline(config, progress=False, log=lambda _: None)
    (row,) = read_results(out / "results.jsonl")
    assert row["provenance"]["skipped"] == {"count": 2, "first": dict.fromkeys(WHITE, NAN)}
    report = (out / "report.md").read_text()
    assert "Every method leaves out 2 images with non-finite features" in report
    assert all(f"{name} ({NAN})" in report for name in WHITE)
    assert "unreadable" not in report


def test_the_report_counts_reasons_only_when_it_knows_them_all():
    first = {"a.jpg": "truncated file", "b.jpg": NAN}
    some = [{"provenance": {"skipped": {"count": 7, "first": first}}}]
    (note,) = _skipped_notes(some)
    assert note.startswith("Every method leaves out 7 images (unreadable or with non-finite")
    assert f"b.jpg ({NAN}) among others." in note
    (note,) = _skipped_notes([{"provenance": {"skipped": {"count": 2, "first": first}}}])
    assert note.startswith("Every method leaves out 2 images (1 unreadable, 1 with non-finite")
    one = {"count": 1, "first": {"b.jpg": NAN}}
    assert (
        "leaves out 1 image with non-finite features "
        in _skipped_notes([{"provenance": {"skipped": one}}])[0]
    )


def test_run_help_names_non_finite_features_under_on_error(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert (
        "--on-error {fail,skip} an image that cannot be read, or whose features are NaN or "
        "infinite: stop (fail)" in help_text
    )


def test_the_fine_tuning_stage_says_the_features_were_not_finite(nan_on_white, folder, tmp_path):
    finetune = {"modes": ["head"], "epochs": 1, "batch_size": 8, "workers": 0}
    config = _skipping_pipeline(folder, tmp_path, finetune)
    lines: list[str] = []
    run_pipeline(config, progress=False, log=lines.append)
    assert "fine-tuning leaves out 2 images with non-finite features" in lines
