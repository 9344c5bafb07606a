"""Features that are NaN, infinite or beyond float16: refused where they arise or are read,
never trained on (a head fitted on them predicts garbage, e.g. class 0 for every row)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from extract_child import NoiseSource
from PIL import Image

from featpipe.backbones import get_backbone
from featpipe.cli import main
from featpipe.errors import FeaturePipeError, NonFiniteFeaturesError, TrainingDivergedError
from featpipe.extract import extract
from featpipe.heads import (
    Embedder,
    TorchLinearSVC,
    TorchLogisticRegression,
    logreg_path,
    select_and_fit,
)
from featpipe.store import FeatureStore, write_arrays

N = 60
SPLITS = ["train"] * 30 + ["val"] * 10 + ["test"] * 20


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(N) % 2
    X = rng.normal(size=(N, 8)).astype(np.float32)
    X[y == 1] += 2
    return X, y


def _store_holding(path, value, dtype="float16") -> FeatureStore:
    """A store whose file holds ``value`` at rows 3 and 45 (test split), as one written before
    featpipe checked features, or by another tool, would: put there behind the writer's back."""
    X, y = _data()
    write_arrays(path, {"pooled": X}, y, SPLITS, ["a", "b"], ids=[f"img{i}" for i in range(N)],
                 dtype=dtype)  # fmt: skip
    with h5py.File(path, "r+") as f:
        ds = f["features/pooled"]
        block = ds[:]
        block[3, 2] = value
        block[45, 1] = value
        ds[:] = block
    return FeatureStore(path)


# -- reading a store ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_a_store_holding_non_finite_features_is_refused_when_read(tmp_path, value):
    store = _store_holding(tmp_path / "s.h5", value)
    with pytest.raises(NonFiniteFeaturesError) as err:
        store.arrays("pooled")
    message = str(err.value)
    print(message)
    assert "'pooled'" in message and str(store.path) in message
    assert "img3" in message and "img45" in message and "2 rows" in message
    assert "--overwrite" in message and "--dtype float32" in message
    with pytest.raises(NonFiniteFeaturesError):
        list(store.iter_chunks("pooled", "test"))
    assert store.arrays("pooled", "val")[0].shape == (10, 8)  # the finite rows still read


@pytest.mark.parametrize("head", ["logreg", "linear_svm", "knn", "logreg_stream"])
def test_heads_refuse_a_store_holding_nan(tmp_path, head):
    store = _store_holding(tmp_path / "s.h5", np.nan)
    with pytest.raises(NonFiniteFeaturesError, match="img3"):
        select_and_fit(head, store, "pooled", grid={"C": [1.0]} if head != "knn" else None)


@pytest.mark.parametrize("command", ["probe", "check"])
def test_the_cli_says_in_one_line_that_a_store_holds_nan(tmp_path, capsys, command):
    store = _store_holding(tmp_path / "s.h5", np.nan)
    assert main([command, str(store.path)]) == 2
    err = capsys.readouterr().err
    print(err)
    assert "Traceback" not in err and "not finite" in err and "img3" in err


def test_reading_a_float32_store_as_float16_names_the_overflow(tmp_path):
    X, y = _data()
    X[5, 0] = 1e6
    store = write_arrays(tmp_path / "s.h5", {"pooled": X}, y, SPLITS, ["a", "b"])
    with pytest.raises(NonFiniteFeaturesError, match="float16"):
        store.arrays("pooled", dtype=np.float16)
    assert store.arrays("pooled")[0][5, 0] == 1e6


# -- heads given arrays ------------------------------------------------------------------------


@pytest.mark.parametrize("head", ["logreg", "linear_svm"])
def test_selection_on_arrays_with_nan_raises_the_project_error(head):
    """StandardScaler passes NaN through, and the C path's L-BFGS crashed with "value cannot
    be converted to type float without overflow"."""
    X, y = _data()
    bad = X.copy()
    bad[7, 1] = np.nan
    with pytest.raises(NonFiniteFeaturesError, match="train"):
        select_and_fit(head, {"train": (bad, y), "val": (X, y)}, grid={"C": [1.0]})


def test_logreg_path_refuses_non_finite_features():
    """The path the LP-FT probe fits (``fit_probe``) on features computed under autocast."""
    X, y = _data()
    bad = X.copy()
    bad[7, 1] = np.inf
    with pytest.raises(NonFiniteFeaturesError, match="row 7"):
        logreg_path(bad, y, [1.0], device="cpu")
    with pytest.raises(NonFiniteFeaturesError, match="validation"):
        logreg_path(X, y, [1.0], X_val=bad, y_val=y, device="cpu")


@pytest.mark.parametrize("cls", [TorchLinearSVC, TorchLogisticRegression])
def test_a_linear_head_whose_solver_diverges_raises_rather_than_predicting_one_class(cls):
    """Unstandardised features of magnitude 1e8-1e10 made float32 L-BFGS return NaN weights,
    and the head then predicted class 0 for every row, silently."""
    X, y = _data()
    with pytest.raises(TrainingDivergedError, match="standardi") as err:
        cls(device="cpu").fit(X * 1e10, y)
    assert isinstance(err.value, FeaturePipeError)
    assert (cls(device="cpu").fit(X, y).predict(X) == y).mean() > 0.9


# -- writing a store ---------------------------------------------------------------------------


def test_nan_at_write_time_names_the_image_ids(tmp_path):
    X, y = _data()
    X[4, 3] = np.nan
    ids = [f"cat_{i}.jpg" for i in range(N)]
    with pytest.raises(NonFiniteFeaturesError, match=r"cat_4\.jpg"):
        write_arrays(tmp_path / "s.h5", {"pooled": X}, y, SPLITS, ["a", "b"], ids=ids)


def test_float16_overflow_at_write_time_names_the_largest_value(tmp_path):
    X, y = _data()
    X[4, 3] = -123456.0
    with pytest.raises(NonFiniteFeaturesError, match=r'123456.*dtype="float32"'):
        write_arrays(tmp_path / "s.h5", {"pooled": X}, y, SPLITS, ["a", "b"], dtype="float16")


def test_nan_from_the_model_stops_extraction_naming_the_images(tmp_path):
    backbone = get_backbone("toy")
    with torch.no_grad():
        backbone.model.fc.bias[3] = float("nan")
    with pytest.raises(NonFiniteFeaturesError, match=r"produced NaN") as err:
        extract(NoiseSource(12), backbone, ["pooled", "logits"], out=tmp_path / "a.h5",
                workers=0, device="cpu", progress=False, batch_size=5)  # fmt: skip
    assert "'logits'" in str(err.value) and "images '" in str(err.value)
    assert not FeatureStore(tmp_path / "a.h5").chunk_done().any()


# -- the Embedder (images in, features out) ----------------------------------------------------


def _nan_toy(spec):
    from toy_backbone import build_toy

    backbone = build_toy(spec)
    with torch.no_grad():
        backbone.model.fc.bias[3] = float("nan")
    return backbone


def test_the_embedder_refuses_nan_from_the_model_and_caches_none(tmp_path):
    """It returned the NaN rows, and cached them per image: every later call, and every CV
    fold, read them back, and the head downstream failed with sklearn's ValueError."""
    from featpipe.backbones import register_backbone, unregister_backbone

    register_backbone("nan_toy")(_nan_toy)
    try:
        images = [Image.new("RGB", (40, 40), (i * 20, 0, 0)) for i in range(3)]
        emb = Embedder("nan_toy", layer="logits", device="cpu", cache_dir=tmp_path / "c").fit()
        with pytest.raises(NonFiniteFeaturesError, match="NaN"):
            emb.transform(images)
        assert not list((tmp_path / "c").rglob("*.npy"))
    finally:
        unregister_backbone("nan_toy")
