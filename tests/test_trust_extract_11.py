"""Extraction's words and choices: one layer asked for twice under two names, the count of
images extracted beside those skipped, which JPEGs nvJPEG gets, and a Ctrl-C during the
command's exit."""

from __future__ import annotations

import re

import pytest

from featpipe.cli import main
from featpipe.store import FeatureStore

TOY = ["--backbone", "toy", "--workers", "0", "--device", "cpu", "--no-progress"]


def test_a_layer_and_the_same_layer_with_its_default_pooling_are_refused(
    image_folder, tmp_path, capsys
):
    """'stage1' pools by avg (a B×C×H×W map): 'stage1:avg' beside it stored the same
    features twice, under two names."""
    out = tmp_path / "s.h5"
    args = ["extract", str(image_folder), *TOY, "--out", str(out), "--layers"]
    assert main([*args, "stage1", "stage1:avg"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and not out.exists()
    assert "Layers 'stage1' and 'stage1:avg' of toy are the same features" in err
    assert "('stage1' pooled by 'avg'); ask for one of them" in err

    assert main([*args, "stage1", "stage1:max"]) == 0  # two poolings: two features
    capsys.readouterr()
    assert set(FeatureStore(out).layers) == {"stage1", "stage1:max"}


@pytest.mark.parametrize("parted", [[], ["--shard", "0/1"]])
def test_the_extracted_count_leaves_out_the_skipped_images(image_folder, tmp_path, capsys, parted):
    """With 3 of 18 images unreadable, the CLI said 'extracted 18 images' and then 'skipped 3'."""
    for name in ("dog/002.jpg", "fox/004.jpg", "cat/001.jpg"):
        path = image_folder / name
        path.write_bytes(path.read_bytes()[:300])  # truncated
    out = tmp_path / "s.h5"
    args = ["extract", str(image_folder), *TOY, "--out", str(out), "--on-error", "skip"]
    assert main([*args, "--batch-size", "4", *parted]) == 0
    text = capsys.readouterr().out
    assert re.search(r"extracted 15 images \(3 skipped\) in [\d.]+ s", text), text
    assert "skipped 3 unreadable images" in text
