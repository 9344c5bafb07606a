"""`featpipe run`'s config under user mistakes and re-runs: a FineTuner setting the run sets
itself, written in [finetune], says where it goes."""

from __future__ import annotations

import re
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


@pytest.mark.parametrize(
    "override, fix",
    [
        ("name=2024", 'name must be string; got int 2024. Write it in quotes: "2024".'),
        ("source.data=2024-01-01T10:00:00", 'Write it in quotes: "2024-01-01T10:00:00".'),
        ('features.layers=["pooled", 5]', "features.layers[1] must be string; got 5. Write it "),
    ],
)
def test_a_name_that_toml_reads_as_a_number_or_date_is_told_to_be_quoted(override, fix):
    # Before: "name must be string; got int 2024." and no fix: --set reads its value as TOML,
    # so a run, folder or layer named by digits or a date needs quotes, which nothing said.
    with pytest.raises(ConfigError, match=re.escape(fix)):
        config_from_dict(RAW, [override])


def test_a_key_with_choices_is_not_told_to_quote_a_number():
    # "16" in quotes is no dtype either: no fix is better than a wrong one.
    with pytest.raises(ConfigError, match=r"features.dtype must be string; got int 16\.$"):
        config_from_dict(RAW, ["features.dtype=16"])
