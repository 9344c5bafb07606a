"""A new user predicting and exporting: a wrong path says it does not exist, and counts of
one read as one ("wrote 1 prediction", not "1 predictions")."""

from __future__ import annotations

import pytest
from conftest import random_images_store

from featpipe.cli import main


@pytest.fixture
def head(tmp_path):
    """A knn head saved from the ``toy`` backbone's store of ten random images."""
    store = random_images_store(tmp_path, "float32")[1].path
    argv = ["probe", str(store), "--heads", "knn", "--cv", "2", "--save-dir", str(tmp_path / "h")]
    assert main(argv) == 0
    return tmp_path / "h" / "knn.skops"


def test_predict_on_a_missing_path_says_it_does_not_exist(head, tmp_path, capsys):
    capsys.readouterr()
    missing = tmp_path / "photos"
    assert main(["predict", str(head), str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    # it said "is neither a file nor a folder", which reads as if something odd were there
    assert f"{missing} does not exist" in err
    assert "image files, folders of images or one feature store" in err


def test_predict_of_one_image_says_one_prediction(head, tmp_path, capsys):
    from PIL import Image

    photo = tmp_path / "one.png"
    Image.new("RGB", (32, 32), (200, 40, 40)).save(photo)
    capsys.readouterr()
    out = tmp_path / "p.csv"
    assert main(["predict", str(head), str(photo), "--out", str(out)]) == 0
    assert f"wrote 1 prediction to {out}" in capsys.readouterr().err
