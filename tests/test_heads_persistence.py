"""save_head / load_head / check_head_matches."""

from __future__ import annotations

import json
import re
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from featpipe.errors import (
    ConfigError,
    FeaturePipeError,
    HeadMismatchError,
    MissingExtraError,
    UntrustedFileError,
)
from featpipe.heads import check_head_matches, load_head, read_sidecar, save_head, select_and_fit
from featpipe.heads.persistence import sidecar_path
from featpipe.heads.registry import HEADS, make_head
from featpipe.store import write_arrays

TOY = {"spec": "toy", "weights_sha256": "a" * 64, "preprocessing": {"resize": 36, "crop": 32}}


def store_with(
    path, backbone=TOY, classes=("cat", "dog", "fox"), layer="pooled", dtype="float32", dim=8
):
    rng = np.random.default_rng(0)
    y = np.arange(60) % 3
    X = rng.normal(size=(60, dim)).astype(np.float32) + y[:, None]
    splits = ["train"] * 30 + ["val"] * 15 + ["test"] * 15
    return write_arrays(
        path, {layer: X}, y, splits, list(classes), attrs={"backbone": backbone}, dtype=dtype
    )


@pytest.fixture
def saved(tmp_path):
    store = store_with(tmp_path / "s.h5")
    result = select_and_fit("logreg", store, "pooled", grid={"C": [0.1, 1.0]})
    path = save_head(
        result.estimator,
        tmp_path / "heads" / "logreg.joblib",
        store=store,
        layer="pooled",
        selection=result,
    )
    return path, store, result


def test_sidecar_records_provenance(saved) -> None:
    path, store, result = saved
    side = json.loads((path.parent / "logreg.joblib.json").read_text())
    assert side == read_sidecar(path)
    assert side["store_key"] == store.key and side["layer"] == "pooled"
    assert side["backbone"]["spec"] == "toy" and side["backbone"]["weights_sha256"] == "a" * 64
    assert side["classes"] == ["cat", "dog", "fox"] and side["head"] == "logreg"
    assert side["hyperparameters"] == result.params
    assert side["preprocessing"] == {"preprocess": "standardize", "pca": None}
    assert side["backbone"]["preprocessing"] == TOY["preprocessing"]
    assert side["features"] == {
        "layer": "pooled",
        "dim": 8,
        "pooling": "unknown",
        "dtype": "float32",
    }
    assert {"scikit-learn", "torch", "numpy", "featpipe"} <= set(side["versions"])


def test_a_joblib_head_still_loads_with_the_trust_warning(saved) -> None:
    path, store, result = saved
    with pytest.warns(UserWarning, match="trusted|trust"):
        head, side = load_head(path)
    X, _ = store.arrays("pooled", "test")
    np.testing.assert_array_equal(head.predict(X), result.estimator.predict(X))
    check_head_matches(side, store, "pooled")  # the same store: no error


@pytest.mark.parametrize(
    ("kwargs", "layer", "match"),
    [
        ({"backbone": {**TOY, "spec": "toy@1"}}, "pooled", "backbone 'toy'; .* of 'toy@1'"),
        ({"backbone": {**TOY, "weights_sha256": "b" * 64}}, "pooled", "weights_sha256"),
        ({"classes": ("cat", "dog", "owl")}, "pooled", "classes"),
        ({"layer": "stage2:avg"}, "stage2:avg", "layer"),
        ({"layer": "stage2:avg"}, "pooled", r"layer: head 'pooled', not in the store"),
        # The same backbone fed at another image size: other features.
        ({"backbone": {**TOY, "preprocessing": {"resize": 73, "crop": 64}}}, "pooled", "crop"),
        ({"dtype": "float16"}, "pooled", r"features dtype: head 'float32', store 'float16'"),
        ({"dim": 4}, "pooled", r"features dim: head \d+, store 4"),
    ],
)
def test_mismatched_store_is_refused(saved, tmp_path, kwargs, layer, match) -> None:
    path, _, _ = saved
    other = store_with(tmp_path / "other.h5", **kwargs)
    with pytest.raises(HeadMismatchError, match=match):
        check_head_matches(read_sidecar(path), other, layer)


def test_a_sidecar_from_before_dtype_checks_warns_and_checks_the_rest(saved, tmp_path) -> None:
    path, store, _ = saved
    old = read_sidecar(path)
    del old["features"]
    old["format_version"] = 1
    with pytest.warns(UserWarning, match=r"format version 1\) does not record .* dtype"):
        check_head_matches(old, store, "pooled")
    other = store_with(tmp_path / "other.h5", backbone={**TOY, "spec": "toy@1"})
    with pytest.raises(HeadMismatchError, match="'toy@1'"), pytest.warns(UserWarning):
        check_head_matches(old, other, "pooled")


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_joblib_head_is_one_clear_error(saved, damage) -> None:
    path = saved[0]
    path.write_bytes(path.read_bytes()[:50] if damage == "truncated" else b"not a pickle")
    where = re.escape(str(path))
    # were an EOFError and a KeyError
    with (
        pytest.warns(UserWarning, match="trust"),
        pytest.raises(ConfigError, match=rf"{where} is not a readable \.joblib .* Save the head"),
    ):
        load_head(path)


def test_a_joblib_head_of_missing_code_keeps_its_own_error(saved, monkeypatch) -> None:
    def load(path):  # as for a head pickled from a module that is not installed here
        raise ModuleNotFoundError("No module named 'my_heads'")

    monkeypatch.setattr("featpipe.heads.persistence.joblib.load", load)
    with pytest.warns(UserWarning, match="trust"), pytest.raises(ModuleNotFoundError):
        load_head(saved[0])  # not a damaged file: not reported as one


@pytest.mark.parametrize("text", ["{oops", "[]", "\udcff"])
def test_an_unreadable_sidecar_is_one_clear_error(saved, text) -> None:
    path = saved[0]
    sidecar_path(path).write_text(text, errors="surrogateescape")  # not JSON, a list, not UTF-8
    where = re.escape(str(sidecar_path(path)))
    with pytest.raises(ConfigError, match=rf"{where} is not a readable head sidecar.* Save the"):
        load_head(path)  # were a JSONDecodeError, an AttributeError and a UnicodeDecodeError


# ---------------------------------------------------------------------------- skops files


class Booby:
    """Records being rebuilt: a load that ran this code would leave ``marker`` behind."""

    def __init__(self, marker: str):
        self.marker = marker

    def __setstate__(self, state: dict) -> None:
        Path(state["marker"]).write_text("ran")
        self.__dict__.update(state)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_every_registered_head_round_trips_through_skops(name, tmp_path) -> None:
    pytest.importorskip("skops")
    store = store_with(tmp_path / "s.h5")
    X, y = store.arrays("pooled", "train")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny data: convergence warnings
        head = make_head(name).fit(X, y)
    path = save_head(head, tmp_path / f"{name}.skops", store=store, layer="pooled")
    assert zipfile.is_zipfile(path)  # a skops archive, not a pickle
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "trust" warning, nor any other
        loaded, side = load_head(path)
    assert type(loaded) is type(head) and side["file_format"] == "skops" and side["head"] == name
    X_test, _ = store.arrays("pooled", "test")
    np.testing.assert_array_equal(loaded.predict(X_test), head.predict(X_test))
    if hasattr(head, "predict_proba"):
        np.testing.assert_allclose(loaded.predict_proba(X_test), head.predict_proba(X_test))
    check_head_matches(side, store, "pooled")


def test_a_skops_file_with_an_untrusted_type_is_refused_unrun(tmp_path) -> None:
    sio = pytest.importorskip("skops.io")
    marker = tmp_path / "marker"
    store = store_with(tmp_path / "s.h5")
    X, y = store.arrays("pooled", "train")
    head = make_head("knn").fit(X, y)
    head.extra_ = Booby(str(marker))  # smuggled into a trusted head's fitted state
    path = save_head(head, tmp_path / "knn.skops", store=store, layer="pooled")
    assert "test_heads_persistence.Booby" in str(sio.get_untrusted_types(file=path))
    with pytest.raises(UntrustedFileError, match=r"test_heads_persistence\.Booby.*Nothing in it"):
        load_head(path)
    assert not marker.exists()
    # a type the caller vouches for is rebuilt (and here its code runs)
    loaded, _ = load_head(path, trusted=("test_heads_persistence.Booby",))
    assert marker.read_text() == "ran" and isinstance(loaded.extra_, Booby)


def test_a_damaged_skops_file_is_one_clear_error(saved, tmp_path) -> None:
    pytest.importorskip("skops")
    path = tmp_path / "bad.skops"
    path.write_bytes(b"not a zip")
    (tmp_path / "bad.skops.json").write_text(json.dumps(read_sidecar(saved[0])))
    with pytest.raises(FeaturePipeError, match=r"not a readable \.skops head file"):
        load_head(path)


def test_without_skops_the_error_names_the_extra(saved, tmp_path, monkeypatch) -> None:
    _, store, result = saved
    monkeypatch.setitem(sys.modules, "skops", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "skops.io", None)
    with pytest.raises(MissingExtraError, match=r'pip install "featpipe\[skops\]"'):
        save_head(result.estimator, tmp_path / "h.skops", store=store, layer="pooled")
    assert not (tmp_path / "h.skops").exists()
