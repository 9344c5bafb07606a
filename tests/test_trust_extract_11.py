"""Extraction's words and choices: one layer asked for twice under two names, the count of
images extracted beside those skipped, which JPEGs nvJPEG gets, and a Ctrl-C during the
command's exit."""

from __future__ import annotations

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
