"""Pipeline config: a fine-tuning grid is held to the bounds of the setting it searches."""

from __future__ import annotations

import re

import pytest

from featpipe.errors import ConfigError
from featpipe.pipeline.config import load_config

PIPELINE = """
name = "t"
[source]
data = "digits"
[features]
backbones = ["toy"]
[finetune]
modes = ["full"]
grid = { GRID }
"""


@pytest.mark.parametrize(
    ("grid", "named"),
    [
        ("epochs = [0, 3]", "epochs"),
        ("lr = [0.01, 0.0]", "lr"),
        ("batch_size = [-8]", "batch_size"),
    ],
)
def test_a_grid_value_the_setting_refuses_is_refused(tmp_path, grid, named):
    # finetune.epochs = 0 is refused; grid = { epochs = [0] } trained no epoch and reported
    # the untrained network (10 % on digits) as a fine-tune.
    path = tmp_path / "t.toml"
    path.write_text(PIPELINE.replace("GRID", grid))
    with pytest.raises(ConfigError, match=rf"finetune\.grid\.{named}.* must be > 0"):
        load_config(path)


def test_a_grid_of_positive_values_is_accepted(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text(PIPELINE.replace("GRID", "epochs = [1, 3], lr = [0.01, 0.1]"))
    assert load_config(path).finetune.grid == {"epochs": [1, 3], "lr": [0.01, 0.1]}


@pytest.mark.parametrize(
    ("layers", "said"),
    [
        ('["pooled+"]', "joins an empty name"),
        ('["pooled+pooled"]', "names 'pooled' more than once"),
    ],
)
def test_a_joined_layer_with_an_empty_or_repeated_part_is_refused(tmp_path, layers, said):
    # "pooled+" was refused as "layer '' is not extracted"; "pooled+pooled" read one layer
    # twice, side by side, under a name that says two.
    path = tmp_path / "t.toml"
    text = PIPELINE.replace("GRID", "epochs = [1]") + f"[probes]\nlayers = {layers}\n"
    path.write_text(text.replace('backbones = ["toy"]', 'backbones = ["toy"]\nlayers = ["pooled"]'))
    want = rf"layer {re.escape(repr(layers[2:-2]))} {said}: .* e\.g\. pooled\+blocks"
    with pytest.raises(ConfigError, match=want):
        load_config(path)


def test_a_store_layer_joined_with_itself_is_refused():
    import numpy as np

    from featpipe.heads.splits import FeatureSplits

    data = {"train": (np.zeros((4, 2)), np.array([0, 1, 0, 1]))}
    with pytest.raises(ConfigError, match="more than once"):
        FeatureSplits(type("S", (), {"arrays": 0, "split_counts": 0})(), "a+a")
    assert FeatureSplits(data).get("train")[0].shape == (4, 2)
