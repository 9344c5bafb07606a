"""`featpipe run`'s config under user mistakes and re-runs: a FineTuner setting the run sets
itself, written in [finetune], says where it goes."""

from __future__ import annotations

import tomllib

import pytest

from featpipe.errors import ConfigError
from featpipe.pipeline import config_from_dict

RAW = {
    "source": {"data": "digits"},
    "features": {"backbones": ["toy"]},
    "finetune": {"modes": ["full"]},
}


@pytest.mark.parametrize(
    "key, value, said",
    [
        ("seed", "1", "list seeds in the top-level seeds"),
        ("device", '"cpu"', "set the top-level device"),
        ("val_fraction", "0.2", "set source.val_fraction"),
        ("decode", '"fast"', "set features.decode"),
        ("mode", '"full"', "list modes in finetune.modes"),
        ("resume", "true", "featpipe run always resumes"),
    ],
)
def test_a_setting_the_run_sets_itself_in_finetune_says_where_it_goes(key, value, said):
    # Before: "Unknown key 'finetune.decode'. Did you mean: 'modes'?", and for seed, device
    # and val_fraction a list of [finetune]'s keys, none of which sets them.
    raw = {**RAW, "finetune": {**RAW["finetune"], key: tomllib.loads(f"v = {value}")["v"]}}
    for given in (raw, RAW):  # in the file, and as a --set override of a file without it
        with pytest.raises(ConfigError, match=f"finetune.{key} is set by featpipe run") as info:
            config_from_dict(given, [] if given is raw else [f"finetune.{key}={value}"])
        assert said in str(info.value) and "Unknown key" not in str(info.value)
