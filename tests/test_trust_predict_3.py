"""featpipe predict's output and inputs: a probability column per class after the first three,
other photos in a folder said, and one image array refused by the Embedder in one line."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import toy_backbone  # noqa: F401  (registers the 'toy' backbone)
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.svm import LinearSVC

from featpipe import extract
from featpipe.cli import main
from featpipe.errors import ConfigError
from featpipe.heads import Embedder, save_head

QUIET = {"workers": 0, "device": "cpu", "progress": False}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(image folder, store, folder of a logreg and an SVM head saved on the store): classes
    a, b and c of 2 small PNGs each."""
    tmp = tmp_path_factory.mktemp("predict3")
    rng = np.random.default_rng(0)
    root = tmp / "img"
    for c in "abc":
        (root / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (36, 40, 3), np.uint8)).save(root / c / f"{i}.png")
    store = extract(str(root), "toy", ["pooled"], out=tmp / "s.h5", **QUIET)
    X, y = store.arrays("pooled")
    for name, head in (("logreg", LogisticRegression(C=100)), ("svm", LinearSVC())):
        save_head(head.fit(X, y), tmp / "heads" / f"{name}.joblib", store=store, layer="pooled")
    return root, store, tmp / "heads"


def _predict(args, capsys) -> str:
    capsys.readouterr()
    with pytest.warns(UserWarning):  # joblib's note on loading pickles
        assert main(["predict", *args, "--device", "cpu"]) == 0
    return capsys.readouterr().out


def test_predict_writes_a_probability_column_per_class_after_the_first_three(
    saved, tmp_path, capsys
):
    """Only the predicted class's probability was written: a user could not rank images by
    another class, nor see how close the second class came."""
    _, store, heads = saved
    out = _predict([str(heads / "logreg.joblib"), str(store.path)], capsys)
    rows = list(csv.DictReader(io.StringIO(out)))
    fields = ["id", "predicted_class", "probability", *(f"probability_{c}" for c in "abc")]
    assert list(rows[0]) == fields
    for row in rows:
        per_class = {c: float(row[f"probability_{c}"]) for c in "abc"}
        assert sum(per_class.values()) == pytest.approx(1, abs=1e-5)
        assert row["predicted_class"] == max(per_class, key=per_class.get)
        assert row["probability"] == row[f"probability_{row['predicted_class']}"]
    json_out = tmp_path / "p.json"
    _predict([str(heads / "logreg.joblib"), str(store.path), "--out", str(json_out)], capsys)
    records = json.loads(json_out.read_text())
    assert [list(r) for r in records] == [fields] * len(rows)
    assert [r["probability_b"] for r in records] == [float(r["probability_b"]) for r in rows]


def test_a_head_without_probabilities_keeps_the_three_columns(saved, capsys):
    _, store, heads = saved
    out = _predict([str(heads / "svm.joblib"), str(store.path)], capsys)
    assert out.splitlines()[0] == "id,predicted_class,probability"


def test_predict_on_a_folder_says_which_photos_it_leaves_out(saved, tmp_path, capsys):
    """.heic photos (and partial downloads) in a predict folder were left out without a word,
    where an image folder source warns of them."""
    root, _, heads = saved
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.open(root / "a" / "0.png").save(folder / "0.png")
    for name in ("1.heic", "2.HEIC", "3.jpg.part"):
        (folder / name).write_bytes(b"not read")
    capsys.readouterr()
    with pytest.warns(UserWarning) as caught:
        assert main(["predict", str(heads / "logreg.joblib"), str(folder), "--device", "cpu"]) == 0
    (said,) = [str(w.message) for w in caught if "leaves out" in str(w.message)]
    assert "3 files" in said and "2 .heic" in said and "1 .part" in said
    assert "Convert" in said and "\n" not in said
    assert len(capsys.readouterr().out.splitlines()) == 2  # the header and the one png


def test_the_embedder_refuses_one_image_array_in_one_line():
    """One (H, W, 3) image array was read as H gray images of W x 3 pixels: H rows of features
    came back, none of them the image's."""
    emb = Embedder("toy", device="cpu")
    image = np.random.default_rng(1).integers(0, 255, (36, 40, 3), np.uint8)
    for one in (image, image[..., 0]):  # an RGB image, a gray one
        with pytest.raises(ConfigError, match=r"pass \[image\] or image\[None\]"):
            emb.transform(one)
    assert emb.transform([image]).shape[0] == 1
    assert emb.transform(image[None]).shape[0] == 1
    np.testing.assert_array_equal(emb.transform(image[None]), emb.transform([image]))
    narrow = np.random.default_rng(2).integers(0, 255, (2, 8, 3, 1), np.uint8)
    assert emb.transform(narrow).shape[0] == 2  # 2 gray images 3 wide, as (N, H, W, 1)
