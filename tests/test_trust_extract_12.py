"""Extraction under damage and odd inputs: a damaged part file of a parted store, limits
that leave no image, images beyond a float16 head's range."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import toy_backbone
from PIL import Image
from sklearn.linear_model import LogisticRegression

from featpipe import extract
from featpipe.backbones import register_backbone
from featpipe.backbones.registry import _BUILTINS
from featpipe.cli import main
from featpipe.heads import save_head
from featpipe.store import FeatureStore

TOY = ["--backbone", "toy", "--workers", "0", "--device", "cpu", "--no-progress"]
QUIET = {"workers": 0, "device": "cpu", "progress": False}


@pytest.mark.parametrize("damage", ["truncated", "not hdf5"])
def test_a_damaged_part_file_is_named_and_deleting_it_recomputes_only_it(
    image_folder, tmp_path, capsys, damage
):
    """A part cut short (a kill, a full disk) read through the top-level file as 'store.h5 is
    damaged: delete it or --overwrite', advice that recomputes every part and that a --shard
    task (which joins its job's store) cannot even follow."""
    out = tmp_path / "s.h5"
    args = ["extract", str(image_folder), *TOY, "--out", str(out), "--dtype", "float32"]
    args += ["--batch-size", "1", "--chunk-rows", "1"]
    assert main([*args, "--shard", "0/3"]) == 0
    part = tmp_path / "s.parts" / "part-00000.h5"
    if damage == "truncated":
        with open(part, "r+b") as f:
            f.truncate(1000)
    else:
        part.write_bytes(b"x" * 5000)
    capsys.readouterr()
    for extra in (["--shard", "1/3"], ["--shard", "1/3", "--overwrite"], []):
        assert main([*args, *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert f"{part}, part 0 of the parted store {out}, is damaged" in err
        assert "Delete that file and run the same extraction again" in err

    part.unlink()
    assert main(args) == 0
    ref = tmp_path / "ref.h5"
    # one image per batch as the parts computed them: batches of another size differ by ~1e-8
    ref_args = ["extract", str(image_folder), *TOY, "--out", str(ref), "--dtype", "float32"]
    assert main([*ref_args, "--batch-size", "1"]) == 0
    got, want = FeatureStore(out), FeatureStore(ref)
    assert list(got.ids()) == list(want.ids())
    np.testing.assert_array_equal(got.arrays("pooled")[0], want.arrays("pooled")[0])


def test_limits_that_leave_no_image_name_the_limits(image_folder, tmp_path, capsys):
    """--limit-train 0 on a folder of train images only said 'A store needs ids, labels and
    splits of one non-zero length; got 0, 0, 0'."""
    out = tmp_path / "s.h5"
    args = ["extract", str(image_folder), *TOY, "--out", str(out)]
    assert main([*args, "--limit-train", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and not out.exists()
    assert "--limit-train 0 leaves no images (18 train in the source)" in err
    assert main([*args, "--limit-train", "0", "--test-fraction", "0.3"]) == 0  # test rows stay
    capsys.readouterr()
    assert FeatureStore(out).split_counts()["train"] == 0


def _bright_toy(spec):
    """toy whose first convolution has large positive weights: its 'stem.0:max' features of
    dark images fit in float16 (about -47000), those of a white image do not (about 80000)."""
    bb = toy_backbone.build_toy(spec)
    with torch.no_grad():
        bb.model.stem[0].weight.abs_().mul_(1.15e4)
        bb.model.stem[0].bias.zero_()
    return bb


def test_predicting_images_beyond_a_float16_heads_range_is_one_line(tmp_path, capsys):
    """A head trained on a float16 store, predicting images whose features exceed 65504:
    rounded to float16 as its store holds them they became inf, and sklearn's ValueError
    ('Input X contains infinity') came as a traceback."""
    if "bright_toy" not in _BUILTINS:
        register_backbone("bright_toy")(_bright_toy)
    rng = np.random.default_rng(0)
    dark, bright = tmp_path / "dark", tmp_path / "bright"
    for c in "ab":
        (dark / c).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 40, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(dark / c / f"{i}.png")
    bright.mkdir()
    Image.fromarray(np.full((32, 32, 3), 255, np.uint8)).save(bright / "white.png")
    layer = "stem.0:max"
    store = extract(str(dark), "bright_toy", [layer], out=tmp_path / "s.h5", **QUIET)
    X, y = store.arrays(layer)
    head = tmp_path / "head.joblib"
    save_head(LogisticRegression().fit(X, y), head, store=store, layer=layer)

    assert main(["predict", str(head), str(dark / "a"), "--device", "cpu"]) == 0
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no numpy overflow warning either
        assert main(["predict", str(head), str(bright), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "1 image gives 'stem.0:max' features beyond 65504, the largest float16" in err
    fix = 'white.png): to predict them, train a head on a store extracted with dtype="float32"'
    assert fix in err
