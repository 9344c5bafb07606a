"""`featpipe run`'s config under user mistakes and re-runs: a FineTuner setting the run sets
itself, written in [finetune], says where it goes; a string that TOML reads as a number is
told to be quoted; a run folder or cache inside the image folder the run reads is refused."""

from __future__ import annotations

import re
import tomllib

import pytest
import toy_backbone  # noqa: F401  (registers the 'toy' backbone)
from conftest import make_image_folder

from featpipe.errors import ConfigError
from featpipe.pipeline import config_from_dict, run_pipeline

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


def folder_pipeline(images, out, cache, **source):
    return config_from_dict(
        {
            "out": str(out),
            "n_boot": 0,
            "device": "cpu",
            "source": {"data": str(images), **source},
            "features": {"backbones": ["toy"], "image_size": 16, "workers": 0,
                         "cache_dir": str(cache)},
            "probes": {"heads": ["knn"]},
        }
    )  # fmt: skip


@pytest.mark.parametrize(
    "out, cache, key, source",
    [
        ("imgs", "cache", "out", {}),
        ("imgs/train/cat/run", "cache", "out", {}),
        ("imgs/train/cat/run", "cache", "out", {"limits": {"train": 6}}),  # a subset of it
        ("run", "imgs/cache", "features.cache_dir", {}),
    ],
)
def test_a_run_folder_or_cache_in_the_image_folder_is_refused_before_anything(
    tmp_path, out, cache, key, source
):
    # Before: the run wrote there; the next run's scan took imgs/cache for a class folder
    # without images (refused), or imgs/train/cat/run/plots/*.png for images of class cat:
    # every row was computed again (another fingerprint), on the report's plots.
    images = make_image_folder(tmp_path / "imgs", per_class=4, splits=("train", "val", "test"))
    config = folder_pipeline(images, tmp_path / out, tmp_path / cache, **source)
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(ConfigError, match=f"{key} = .* is in the image folder .* Give {key} a"):
        run_pipeline(config, progress=False, log=lambda _: None)
    assert sorted(p for p in tmp_path.rglob("*")) == before


def test_a_run_folder_and_cache_beside_the_image_folder_run_twice_alike(tmp_path):
    images = make_image_folder(tmp_path / "imgs", per_class=4, splits=("train", "val", "test"))
    config = folder_pipeline(images, tmp_path / "run", tmp_path / "cache")
    run_pipeline(config, progress=False, log=lambda _: None)
    said: list[str] = []
    run_pipeline(config, progress=False, log=said.append)
    assert any("1 already finished" in line for line in said), said
