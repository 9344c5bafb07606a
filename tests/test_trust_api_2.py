"""A head given features of another width, chunk indices outside a one-chunk store and a
missing head file each say what was wrong and how to fix it."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from extract_child import NoiseSource

from featpipe.errors import ConfigError, HeadMismatchError
from featpipe.extract import plan_extraction, run_extraction
from featpipe.heads import LogisticProbe, load_head, save_head
from featpipe.store import write_arrays

TOY = {"spec": "toy", "weights_sha256": "a" * 64, "preprocessing": {"resize": 36, "crop": 32}}
FAST = dict(workers=0, device="cpu", progress=False, dtype="float32")


def features(n: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = np.arange(n) % 3
    return rng.normal(size=(n, dim)).astype(np.float32) + y[:, None], y


def fitted(dim: int = 8) -> LogisticProbe:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny data
        return LogisticProbe(device="cpu", n_threads=1).fit(*features(30, dim))


def test_a_head_given_features_of_another_width_raises_head_mismatch_with_the_fix():
    """Before: scikit-learn's bare ValueError, 'X has 5 features, but LogisticProbe is
    expecting 8 features as input.', no featpipe error and no fix."""
    with pytest.raises(HeadMismatchError) as err:
        fitted().predict(features(4, 5)[0])
    said = str(err.value)
    assert isinstance(err.value, ValueError) and "\n" not in said
    # scikit-learn's own words stay: its estimator checks match on them
    assert "X has 5 features, but LogisticProbe is expecting 8 features as input" in said
    assert "the features it was fitted on" in said and "fit a new head" in said


def saved_and_loaded(tmp_path, name: str = "logreg.skops"):
    pytest.importorskip("skops")
    X, y = features(60, 8)
    splits = ["train"] * 30 + ["val"] * 15 + ["test"] * 15
    store = write_arrays(
        tmp_path / "s.h5", {"pooled": X}, y, splits, ["a", "b", "c"], attrs={"backbone": TOY}
    )
    path = save_head(fitted(), tmp_path / name, store=store, layer="pooled")
    return load_head(path)[0]


@pytest.mark.parametrize("method", ["predict", "predict_proba", "decision_function"])
def test_a_loaded_head_names_the_layer_and_backbone_it_was_fitted_on(tmp_path, method):
    head = saved_and_loaded(tmp_path)
    with pytest.raises(HeadMismatchError) as err:
        getattr(head, method)(features(4, 5)[0])
    assert "features of layer 'pooled' of the backbone 'toy' at image size 32" in str(err.value)


def test_a_loaded_head_saved_again_and_refitted_keeps_the_right_words(tmp_path):
    head = saved_and_loaded(tmp_path)
    again, _ = load_head(save_head(head, tmp_path / "again.skops"))  # skops keeps what it got
    assert again.predict(features(4, 8)[0]).shape == (4,)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again.fit(*features(30, 5))  # fitted on other features now: the sidecar's words go
    with pytest.raises(HeadMismatchError) as err:
        again.predict(features(4, 8)[0])
    assert "'pooled'" not in str(err.value) and "the features it was fitted on" in str(err.value)


def test_a_chunk_outside_a_one_chunk_store_says_so_in_words_with_the_fix(tmp_path):
    """Before: 'Chunk indices must be integers in [0, 1) (the store has 1 chunks); got [1].'"""
    plan = plan_extraction(NoiseSource(4), "toy", out=tmp_path / "s.h5", chunk_rows=8, **FAST)
    with pytest.raises(ConfigError) as err:
        run_extraction(plan, chunks=[0, 1])
    said = str(err.value)
    assert "the store has 1 chunk " in said and "got [1]" in said and "\n" not in said
    assert "smaller chunk_rows" in said


def test_a_missing_head_file_names_save_head_for_python_callers(tmp_path):
    """Before: only 'featpipe probe STORE --save-dir DIR', a command, for a Python caller."""
    with pytest.raises(ConfigError) as err:
        load_head(tmp_path / "nope.skops")
    said = str(err.value)
    assert "save_head(head, path, store=store, layer=layer)" in said and "--save-dir" in said
