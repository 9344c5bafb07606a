"""Trained heads once they leave the process: saving, loading and applying them."""

from __future__ import annotations

import csv
import json
import shutil
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest

from featpipe.backbones import get_backbone
from featpipe.cli import main
from featpipe.errors import ConfigError, HeadMismatchError
from featpipe.extract import extract
from featpipe.heads import check_head_matches, load_head, read_sidecar, save_head, select_and_fit
from featpipe.heads.persistence import sidecar_path
from featpipe.store import write_arrays

CLASSES = ("cat", "dog", "fox")


def a_store(path, classes=CLASSES, backbone=None, n=30, dim=32, seed=0):
    """``n`` rows of 3 shifted blobs, half train and half val."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % len(classes)
    X = (rng.normal(size=(n, dim)) + y[:, None]).astype(np.float32)
    splits = ["train"] * (n // 2) + ["val"] * (n - n // 2)
    attrs = {"backbone": backbone} if backbone else None
    return write_arrays(path, {"pooled": X}, y, splits, list(classes), attrs=attrs)


def saved_head(tmp_path, name="knn", suffix=".skops", store=None, file="head"):
    if suffix == ".skops":
        pytest.importorskip("skops")
    store = store or a_store(tmp_path / f"{file}.h5")
    result = select_and_fit(name, store, "pooled", grid=_one(name), device="cpu")
    path = save_head(
        result.estimator,
        tmp_path / f"{file}{suffix}",
        store=store,
        layer="pooled",
        selection=result,
    )
    return path, store, result


def _one(name: str) -> dict:
    return {"C": [1.0]} if name == "logreg" else {"n_neighbors": [3]}


def _load(path):
    with pytest.warns(UserWarning, match="trust") if path.suffix == ".joblib" else nullcontext():
        return load_head(path)


def test_predict_on_images_refuses_a_head_whose_preprocessing_differs(
    image_folder, tmp_path, capsys
):
    # The image path compared only the weights' sha256: a head whose store was made with
    # other preprocessing (an older featpipe's recipe for the same model) predicted silently.
    ident = get_backbone("toy").identity()
    other = {**ident["preprocessing"], "interpolation": "bicubic", "resize": 64}
    store = a_store(tmp_path / "s.h5", backbone={**ident, "preprocessing": other})
    path, _, _ = saved_head(tmp_path, "logreg", store=store)
    assert main(["predict", str(path), str(image_folder), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "backbone preprocessing" in err and "bicubic" in err and "Traceback" not in err


def test_predict_on_images_gives_the_store_paths_predictions_exactly(
    split_image_folder, tmp_path
) -> None:
    # A float16 store holds its features rounded; the image path's float32 features moved
    # probabilities by ~1e-4, enough to flip a prediction near a boundary.
    store = extract(
        str(split_image_folder), backbone="toy", cache_dir=tmp_path / "c", progress=False,
        workers=0, device="cpu", dtype="float16",
    )  # fmt: skip
    path, _, _ = saved_head(tmp_path, "logreg", store=store)
    on_store, on_images = tmp_path / "store.csv", tmp_path / "images.csv"
    test = split_image_folder / "test"
    assert (
        main(["predict", str(path), str(store.path), "--split", "test", "--out", str(on_store)])
        == 0
    )
    assert main(["predict", str(path), str(test), "--device", "cpu", "--out", str(on_images)]) == 0
    by_id = {r["id"]: r for r in csv.DictReader(on_store.open())}
    rows = list(csv.DictReader(on_images.open()))
    assert len(rows) == len(by_id) == 12
    for row in rows:
        same = by_id[str(Path(row["id"]).relative_to(split_image_folder))]
        assert (row["predicted_class"], row["probability"]) == (
            same["predicted_class"],
            same["probability"],
        )


@pytest.mark.parametrize("suffix", [".skops", ".joblib"])
def test_an_interrupted_save_leaves_the_previous_head_and_sidecar(tmp_path, monkeypatch, suffix):
    # The model was renamed into place, then the sidecar written in place: stopped while
    # writing it, the old sidecar was truncated (and the new model paired with nothing).
    path, store, first = saved_head(tmp_path, "knn", suffix)
    before = read_sidecar(path)
    other = a_store(tmp_path / "other.h5", classes=("fox", "cat", "dog"), seed=1)
    second = select_and_fit("logreg", other, "pooled", grid={"C": [1.0]}, device="cpu")

    def killed(self, text, *args, **kwargs):
        Path.write_bytes(self, text[: len(text) // 2].encode())
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", killed)
    with pytest.raises(KeyboardInterrupt):
        save_head(second.estimator, path, store=other, layer="pooled", selection=second)
    monkeypatch.undo()
    head, side = _load(path)
    assert side == before and type(head) is type(first.estimator)
    X, _ = store.arrays("pooled", "val")
    np.testing.assert_array_equal(head.predict(X), first.estimator.predict(X))
    store.close()  # done reading: its read lock file goes
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("head")) == sorted(
        ["head.h5", path.name, sidecar_path(path).name]
    )  # no temporary file left behind


@pytest.mark.parametrize("suffix", [".skops", ".joblib"])
def test_a_head_file_from_another_save_is_refused(tmp_path, suffix) -> None:
    # A save stopped between its two renames, or a file copied over another: the sidecar
    # described one head and the file held another, which was applied without a word.
    path, _, _ = saved_head(tmp_path, "knn", suffix, file="a")
    other, _, _ = saved_head(tmp_path, "logreg", suffix, file="b")
    shutil.copyfile(other, path)
    with pytest.raises(ConfigError, match=r"not the file its sidecar .* describes"):
        _load(path)


def test_a_file_that_is_not_a_head_is_a_clean_error(tmp_path, capsys) -> None:
    sio = pytest.importorskip("skops.io")
    from sklearn.preprocessing import StandardScaler

    path, store, _ = saved_head(tmp_path)
    sio.dump(StandardScaler().fit(np.zeros((3, 32))), path)
    side = read_sidecar(path)
    side.pop("file_sha256", None)  # as a sidecar written before it was recorded
    side["format_version"] = 2
    sidecar_path(path).write_text(json.dumps(side))
    assert main(["predict", str(path), str(store.path)]) == 2  # was an AttributeError
    err = capsys.readouterr().err
    assert "holds a StandardScaler, not a fitted classifier" in err and "Traceback" not in err


def test_a_sidecar_from_a_newer_featpipe_is_refused(tmp_path) -> None:
    path, _, _ = saved_head(tmp_path)
    side = read_sidecar(path)
    side["format_version"] = 99  # a sidecar may then record what this featpipe cannot check
    sidecar_path(path).write_text(json.dumps(side))
    with pytest.raises(
        ConfigError, match=r"format version 99; this featpipe reads up to .*Upgrade"
    ):
        load_head(path)


@pytest.mark.parametrize(
    "classes", [("dog", "cat", "fox"), ("cat", "dog", "fox", "owl"), ("cat", "dog")]
)
def test_a_store_with_another_class_list_is_refused(tmp_path, capsys, classes) -> None:
    path, _, _ = saved_head(tmp_path)
    other = a_store(tmp_path / "other.h5", classes=classes)
    with pytest.raises(HeadMismatchError, match="classes: head"):
        check_head_matches(read_sidecar(path), other, "pooled")
    assert main(["predict", str(path), str(other.path)]) == 2
    assert "classes: head ['cat', 'dog', 'fox']" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["knn", "rbf_svm"])
def test_every_head_refuses_a_train_split_of_one_class(tmp_path, capsys, name) -> None:
    # rbf_svm failed with sklearn's traceback; knn fitted a head that predicts one class.
    y = np.array([0] * 10 + [0, 1, 2] * 3)
    X = (np.random.default_rng(0).normal(size=(len(y), 4)) + y[:, None]).astype(np.float32)
    store = write_arrays(tmp_path / "s.h5", {"pooled": X}, y, ["train"] * 10 + ["val"] * 9, CLASSES)
    assert main(["probe", str(store.path), "--heads", name, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "train split holds only class 'cat'" in err and "Traceback" not in err


def test_a_store_of_the_same_model_keyed_otherwise_is_refused(tmp_path) -> None:
    # Only spec, weights and preprocessing were recorded: a store whose backbone identity
    # differs elsewhere (Swin's stages pooled before they were turned; the pooling of
    # token layers) gave the same layer, pooling and width, and the head was applied to it.
    ident = get_backbone("toy").identity()
    store = a_store(tmp_path / "s.h5", backbone={**ident, "nhwc_layers": ["stage1"]})
    path, _, _ = saved_head(tmp_path, store=store)
    older = a_store(tmp_path / "older.h5", backbone=ident, seed=1)
    with pytest.raises(
        HeadMismatchError, match=r"backbone nhwc_layers: head \['stage1'\], store None"
    ):
        check_head_matches(read_sidecar(path), older, "pooled")
    check_head_matches(read_sidecar(path), store, "pooled")  # its own store: no error
