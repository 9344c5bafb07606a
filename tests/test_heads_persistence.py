"""save_head / load_head / check_head_matches."""

from __future__ import annotations

import json

import numpy as np
import pytest

from featpipe.errors import HeadMismatchError
from featpipe.heads import check_head_matches, load_head, read_sidecar, save_head, select_and_fit
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


def test_load_warns_and_round_trips(saved) -> None:
    path, store, result = saved
    with pytest.warns(UserWarning, match="trusted|trust"):
        head, side = load_head(path)
    X, _ = store.arrays("pooled", "test")
    np.testing.assert_array_equal(head.predict(X), result.estimator.predict(X))
    check_head_matches(side, store, "pooled")  # the same store: no error


@pytest.mark.parametrize(
    ("kwargs", "layer", "match"),
    [
        ({"backbone": {**TOY, "spec": "toy@1"}}, "pooled", "backbone spec"),
        ({"backbone": {**TOY, "weights_sha256": "b" * 64}}, "pooled", "weights_sha256"),
        ({"classes": ("cat", "dog", "owl")}, "pooled", "classes"),
        ({"layer": "stage2:avg"}, "stage2:avg", "layer"),
        ({"layer": "stage2:avg"}, "pooled", r"layer: head 'pooled', not in the store"),
        # The same backbone fed at another image size: other features.
        ({"backbone": {**TOY, "preprocessing": {"resize": 73, "crop": 64}}}, "pooled", "crop"),
        ({"dtype": "float16"}, "pooled", r"features: .*'dtype': 'float16'"),
        ({"dim": 4}, "pooled", r"features: .*'dim': 4"),
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
    with pytest.raises(HeadMismatchError, match="backbone spec"), pytest.warns(UserWarning):
        check_head_matches(old, other, "pooled")
