"""Fine-tune trust checks, session 16: a run folder inside the image folder it trains on is
refused (a later scan of that folder took it for a class folder, or its report's plots for
images of a class)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from conftest import make_image_folder
from test_finetune import tuner

from featpipe.cli import main as cli_main
from featpipe.data import open_source
from featpipe.errors import ConfigError

ARGS = ["--backbone", "toy", "--mode", "head", "--epochs", "1", "--batch-size", "4"]
ARGS += ["--image-size", "16", "--no-progress", "--val-fraction", "0.3"]


@pytest.mark.parametrize("inside", ["runs/a", "train/cat/run"])
def test_a_run_dir_inside_the_image_folder_is_refused_and_leaves_nothing(tmp_path, capsys, inside):
    # Before: runs/a trained, then every later scan of the folder (its own resume included)
    # failed ("named like a split beside folder(s) 'runs'"); train/cat/run trained and resumed,
    # and `featpipe report` on it wrote plots/*.png that the next scan read as 4 cat images.
    images = make_image_folder(tmp_path / "imgs", per_class=4, splits=("train", "test"))
    before = sorted(p for p in images.rglob("*"))
    assert (
        cli_main(["finetune", "--data", str(images), *ARGS, "--run-dir", str(images / inside)]) == 2
    )
    err = capsys.readouterr().err
    assert f"The run folder {images / inside} is inside the image folder {images}" in err
    assert "Use a run_dir outside the image folder (CLI: --run-dir)" in err
    assert "Traceback" not in err
    assert sorted(p for p in images.rglob("*")) == before  # no folder left among the images
    assert len(open_source(images)) == 24


def test_the_python_api_refuses_it_for_a_subset_of_the_folder_too(tmp_path):
    images = make_image_folder(tmp_path / "imgs", per_class=4)
    source = open_source(images, val_fraction=0.25, test_fraction=0.25)
    with pytest.raises(ConfigError, match="is inside the image folder"):
        tuner(epochs=1, batch_size=4, run_dir=images / "cat" / "run").fit(source.subset(range(12)))
    assert not (images / "cat" / "run").exists()


@pytest.mark.filterwarnings("ignore:The fine-tune chose epoch")
def test_a_run_dir_beside_the_image_folder_trains(tmp_path):
    images = make_image_folder(tmp_path / "imgs", per_class=4, splits=("train", "test"))
    run = Path(tmp_path / "imgs-runs" / "a")  # a sibling whose name starts like the folder's
    assert cli_main(["finetune", "--data", str(images), *ARGS, "--run-dir", str(run)]) == 0
    assert (run / "last.pt").exists()


@pytest.mark.filterwarnings("ignore:The fine-tune chose epoch")
def test_a_resume_over_changed_images_says_what_the_fingerprint_covers(tmp_path):
    # Before: "source: checkpoint '85616bc0...', now 'f1316a6d...'": two 64-digit hashes, the
    # same for a folder copied without its files' times as for new images.
    images = make_image_folder(tmp_path / "imgs", per_class=4, splits=("train", "test"))
    fit = dict(epochs=1, batch_size=4, val_fraction=0.3, run_dir=tmp_path / "run")
    tuner(**fit).fit(open_source(images))
    touched = images / "train" / "cat" / "000.jpg"
    os.utime(touched, (touched.stat().st_atime, touched.stat().st_mtime + 5))
    with pytest.raises(ConfigError) as caught:
        tuner(**fit).fit(open_source(images))
    said = str(caught.value)
    assert "source: its images are not the checkpoint's (files added, removed or renamed" in said
    assert "another size or modification time, as a copy that did not keep the times" in said
    assert re.search(r"fingerprint [0-9a-f]{12}, now [0-9a-f]{12}\)", said)
    assert "resume=False (CLI: --no-resume)" in said
