"""User backbones: what a factory returns, classifier and stage names, preprocessing values,
and one layer asked for as a string."""

from __future__ import annotations

import numpy as np
import pytest
from toy_backbone import ToyNet

from featpipe.backbones import Backbone, Preprocessing, register_backbone
from featpipe.backbones.registry import get_backbone, unregister_backbone
from featpipe.data import ArraySource
from featpipe.errors import ConfigError
from featpipe.extract import extract

PRE = Preprocessing(resize=36, crop=32)


@pytest.mark.parametrize("made", [ToyNet, lambda: None])
def test_a_factory_that_returns_no_backbone_is_refused_in_one_line(made):
    register_backbone("bb2_not_a_backbone")(lambda spec: made())
    try:
        with pytest.raises(ConfigError, match=r"returned .*not a featpipe Backbone.*Backbone\("):
            get_backbone("bb2_not_a_backbone")
    finally:
        unregister_backbone("bb2_not_a_backbone")


@pytest.mark.parametrize(
    "names, words",
    [
        ({"classifier": "nope"}, "Unknown classifier module 'nope'"),
        ({"stages": ["stem", "nope"]}, r"stages name \['nope'\]"),
        ({"stages": [("stem", "bogus.weight")]}, r"stages name \['bogus.weight'\]"),
    ],
)
def test_a_classifier_or_stage_the_model_does_not_have_is_refused_when_built(names, words):
    with pytest.raises(ConfigError, match=words):
        Backbone(spec="mynet", model=ToyNet(), preprocessing=PRE, **names)


def test_stages_may_name_parameters_and_modules():
    bb = Backbone(
        spec="mynet", model=ToyNet(), preprocessing=PRE, stages=[("stem", "fc.bias"), "stage1"]
    )
    assert bb.stages == [("stem", "fc.bias"), ("stage1",)] and bb.classifier == "fc"


@pytest.mark.parametrize(
    "values, words",
    [
        ({"mean": (0.5,)}, "mean needs three finite numbers"),
        ({"mean": (0.5, 0.5)}, "mean needs three finite numbers"),
        ({"std": (0.2, 0.2, 0.2, 0.2)}, "std needs three finite numbers"),
        ({"mean": (0.5, float("nan"), 0.5)}, "mean needs three finite numbers"),
        ({"std": (0, 1, 1)}, "std must be positive"),
        ({"std": (0.2, -0.2, 0.2)}, "std must be positive"),
    ],
)
def test_preprocessing_refuses_a_mean_or_std_that_is_not_one_valid_value_per_channel(values, words):
    with pytest.raises(ConfigError, match=words):
        Preprocessing(resize=36, crop=32, **values)


def test_one_layer_given_as_a_string_is_one_layer(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    source = ArraySource(images, [0, 1] * 2, splits=["train"] * 4)
    bb = Backbone(spec="mynet", model=ToyNet(), preprocessing=PRE)
    store = extract(source, bb, "pooled", cache_dir=tmp_path, dtype="float32", progress=False)
    listed = extract(source, bb, ["pooled"], cache_dir=tmp_path, dtype="float32", progress=False)
    assert store.layers == ["pooled"] and store.path == listed.path
    features = bb.features("stage1:max")
    features.remove()
    assert [s.name for s in features.specs] == ["stage1:max"]
