"""Extraction under damage and odd inputs: a damaged part file of a parted store, limits
that leave no image."""

from __future__ import annotations

import numpy as np
import pytest

from featpipe.cli import main
from featpipe.store import FeatureStore

TOY = ["--backbone", "toy", "--workers", "0", "--device", "cpu", "--no-progress"]


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
        assert "Delete that file and run the same command again" in err

    part.unlink()
    assert main(args) == 0
    ref = tmp_path / "ref.h5"
    assert main(["extract", str(image_folder), *TOY, "--out", str(ref), "--dtype", "float32"]) == 0
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
