"""A fine-tune on train rows of one class is refused before training, in every mode, in one
fine-tuning message (it trained to predict that class and reported 100 %); a fine-tune whose
val rows cannot choose (its chosen epoch, or grid candidate, no better than predicting the
most common val class) says so, with the heads' rule."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import toy_backbone  # noqa: F401  (registers the 'toy' backbone)
from conftest import make_image_folder
from finetune_child import synthetic_source
from test_trust_finetune_10 import STAGES  # noqa: F401  (registers 'toy_staged10')

from featpipe.cli import main as cli_main
from featpipe.data import ArraySource
from featpipe.errors import ConfigError
from featpipe.finetune import FineTuner
from featpipe.finetune.search import fit_grid

CANNOT_CHOOSE = "no better than predicting class"


def _one_class_train() -> ArraySource:
    labels = np.array([0] * 8 + [0, 1] * 3 + [0, 1] * 3)
    images = np.random.default_rng(0).integers(0, 255, (len(labels), 8, 8, 3), np.uint8)
    splits = ["train"] * 8 + ["val"] * 6 + ["test"] * 6
    return ArraySource(images, labels, splits=splits, classes=["a", "b"], name="one")


@pytest.mark.filterwarnings("ignore:In the splits given")  # class b has no train row
@pytest.mark.parametrize("mode", ["full", "head", "bn", "partial:1", "lpft"])
def test_train_rows_of_one_class_are_refused_in_every_mode(mode, tmp_path):
    # Before: every mode but LP-FT trained to predict 'a' for every image; LP-FT was refused
    # in logistic regression's words ("needs at least 2 classes; got [np.int64(0)]").
    tuner = FineTuner(
        "toy_staged10", mode=mode, epochs=1, batch_size=4, verbose=0, run_dir=tmp_path / "f"
    )
    with pytest.raises(ConfigError, match=r"train rows hold 8 images, all of class 'a': a fine-"):
        tuner.fit(_one_class_train())
    assert not (tmp_path / "f").exists()


def test_featpipe_finetune_on_one_train_class_is_refused_in_one_line(tmp_path, capsys):
    data = make_image_folder(tmp_path / "img", classes=("a", "b"), per_class=3, splits=("val",))
    make_image_folder(tmp_path / "img", classes=("a",), per_class=3, splits=("train", "test"))
    args = "finetune --backbone toy --mode head --epochs 1 --batch-size 2 --no-progress"
    run_dir = tmp_path / "ft"
    assert cli_main([*args.split(), "--data", str(data), "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "The train rows hold 3 images, all of class 'a'" in err and "Traceback" not in err
    assert not run_dir.exists()


def test_one_train_image_is_refused_as_one_class():
    # The 1-row train split test_trust_finetune_10 refused as a batch of one.
    with pytest.raises(ConfigError, match=r"train rows hold 1 image, all of class '0'"):
        FineTuner("toy", mode="bn", epochs=1, verbose=0).fit(synthetic_source(n_train=1))


def test_a_val_split_that_cannot_choose_the_epoch_warns(tmp_path):
    # Before: 12 images of 2 classes, val carved 11/1: the epoch was chosen on one image,
    # silently (epoch 0, the untrained model, was kept at 100 %).
    data = make_image_folder(tmp_path / "img", classes=("a", "b"), per_class=6)
    args = "finetune --backbone toy --epochs 2 --batch-size 4 --no-progress --val-fraction 0.1"
    said = r"The fine-tune chose epoch \d at [\d.]+ % val accuracy on 1 val row, " + CANNOT_CHOOSE
    with pytest.warns(UserWarning, match=said) as caught:
        argv = [*args.split(), "--data", str(data), "--run-dir", str(tmp_path / "ft")]
        assert cli_main(argv) == 0
    [warning] = [w for w in caught if CANNOT_CHOOSE in str(w.message)]
    assert "(carved from train: raise val_fraction, CLI --val-fraction)" in str(warning.message)


@pytest.mark.filterwarnings("ignore:In the splits given")
def test_a_grid_whose_val_cannot_choose_says_so_for_the_candidate():
    source = synthetic_source(n_train=12, n_val=1, n_test=0)
    tuner = FineTuner("toy", epochs=1, batch_size=4, verbose=0)
    with pytest.warns(UserWarning, match=CANNOT_CHOOSE) as said:
        fit_grid(tuner, source, {"lr": [0.01, 0.05]})
    chose = [str(w.message).split(" at ")[0] for w in said if CANNOT_CHOOSE in str(w.message)]
    assert chose[-1] == "The fine-tune chose grid candidate lr=0.01"  # ties: the first


def test_a_val_split_that_chooses_gives_no_warning():
    # The rule cannot fire on a healthy choice: val accuracy above the most common class's share.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tuner = FineTuner("toy", epochs=2, batch_size=8, lr=0.05, verbose=0, seed=0)
        tuner.fit(synthetic_source())
    assert tuner.best_score_[0] > 0.5
    assert not [w for w in caught if CANNOT_CHOOSE in str(w.message)]
