"""Pipeline config: a fine-tuning grid is held to the bounds of the setting it searches."""

from __future__ import annotations

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
