"""featpipe predict on image folders: the images it reads are those an image folder reads,
and its predictions on them equal its predictions on the store the head was trained on."""

from __future__ import annotations

import csv
import io
import json
import shutil

import numpy as np
import pytest
import toy_backbone  # noqa: F401  (registers the 'toy' backbone)
from PIL import Image
from sklearn.linear_model import LogisticRegression

from featpipe import extract
from featpipe.cli import main
from featpipe.heads import save_head

QUIET = {"workers": 0, "device": "cpu", "progress": False}


def _pngs(root, seed: int):
    """root/{a,b}/{0,1,2}.png: 2 classes of 3 small random PNGs each; root."""
    rng = np.random.default_rng(seed)
    for c in "ab":
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (40, 50, 3), np.uint8)).save(root / c / f"{i}.png")
    return root


def _saved_head(tmp_path, root, **extract_kw):
    """The store of the images under root (tmp_path/s.h5) and a head saved on it (its path)."""
    store = extract(str(root), "toy", ["pooled"], out=tmp_path / "s.h5", **extract_kw, **QUIET)
    X, y = store.arrays("pooled")
    path = tmp_path / "head.joblib"
    save_head(LogisticRegression(C=100).fit(X, y), path, store=store, layer="pooled")
    return store, path


@pytest.fixture
def head(tmp_path):
    """(image folder, a head saved on its store): 2 classes of 3 small PNGs each."""
    root = _pngs(tmp_path / "img", 0)
    return root, _saved_head(tmp_path, root)[1]


def _predict(args, capsys) -> list[str]:
    capsys.readouterr()
    assert main(["predict", *args, "--device", "cpu"]) == 0
    return [row["id"] for row in csv.DictReader(io.StringIO(capsys.readouterr().out))]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_predict_on_a_folder_leaves_out_hidden_files_as_an_image_folder_does(head, capsys):
    """A macOS resource fork (a/._0.png) and a notebook's checkpoint copy were read: predict
    failed on the fork ('not an image') where extraction of the same folder left both out."""
    root, path = head
    (root / "a" / "._0.png").write_bytes(b"\x00\x05\x16\x07Mac OS X resource fork")
    (root / "b" / ".ipynb_checkpoints").mkdir()
    shutil.copy(root / "b" / "0.png", root / "b" / ".ipynb_checkpoints" / "0.png")
    ids = _predict([str(path), str(root)], capsys)
    assert ids == [str(root / c / f"{i}.png") for c in "ab" for i in range(3)]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_predict_out_in_a_new_folder_is_written_there(head, tmp_path, capsys):
    """--out preds/p.csv in a folder not made yet failed with a FileNotFoundError traceback,
    after every image was embedded."""
    root, path = head
    out = tmp_path / "preds" / "p.csv"
    assert main(["predict", str(path), str(root), "--out", str(out), "--device", "cpu"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["id"] for r in rows] == [str(root / c / f"{i}.png") for c in "ab" for i in range(3)]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_predict_out_ending_in_json_writes_json(head, tmp_path, capsys):
    """--out p.json got CSV text under a .json name, which json.load refuses."""
    root, path = head
    out = tmp_path / "p.json"
    assert main(["predict", str(path), str(root), "--out", str(out), "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["predict", str(path), str(root), "--device", "cpu"]) == 0
    on_csv = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    records = json.loads(out.read_text())
    assert [r["id"] for r in records] == [r["id"] for r in on_csv]
    assert [r["predicted_class"] for r in records] == [r["predicted_class"] for r in on_csv]
    assert [f"{r['probability']:.6f}" for r in records] == [r["probability"] for r in on_csv]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_predict_on_images_refuses_split_which_only_a_store_has(head, capsys):
    """--split test on images was ignored: every image was predicted, exit 0."""
    root, path = head
    assert main(["predict", str(path), str(root), "--split", "test"]) == 2
    err = capsys.readouterr().err
    assert "--split test selects rows of a feature store; images have no split" in err
    assert "Traceback" not in err


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_predict_names_the_batch_size_option_it_refuses(head, capsys):
    """--batch-size 0 said 'batch_size must be >= 1', the Embedder's parameter name."""
    root, path = head
    with pytest.raises(SystemExit):
        main(["predict", str(path), str(root), "--batch-size", "0"])
    assert "--batch-size: must be a positive integer; got 0" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:Loading")
def test_predict_on_error_skip_leaves_out_what_a_skip_store_left_out(tmp_path, capsys):
    """A store extracted with --on-error skip leaves an unreadable image out; predict on the
    same images failed on it, with no way to predict the rest."""
    root = _pngs(tmp_path / "img", 1)
    (root / "a" / "1.png").write_bytes(b"not a png")
    store, path = _saved_head(tmp_path, root, on_error="skip")
    capsys.readouterr()
    assert main(["predict", str(path), str(store.path)]) == 0
    on_store = capsys.readouterr().out.splitlines()
    with pytest.warns(UserWarning, match=r"--on-error skip left out 1 of 6 images .*a/1\.png"):
        assert (
            main(["predict", str(path), str(root), "--on-error", "skip", "--batch-size", "4"]) == 0
        )
    on_images = capsys.readouterr().out.replace(f"{root}/", "").splitlines()
    assert on_images == on_store and len(on_store) == 6  # header and 5 rows
