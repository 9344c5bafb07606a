"""A pipeline run reads the library's settings as its file's keys (runner.in_file_words):
it read dtype="float32", val_fraction=0.1, sync_bn=True and cache_dir (CLI: --cache-dir),
each with the command line's aside, where its file sets features.dtype, source.val_fraction,
finetune.sync_bn and features.cache_dir."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import toy_backbone

from featpipe.backbones import register_backbone
from featpipe.backbones.registry import unregister_backbone
from featpipe.errors import ConfigError, NonFiniteFeaturesError
from featpipe.extract import extractor, loop
from featpipe.finetune.ddp import convert_sync_bn
from featpipe.heads.finite import check_finite
from featpipe.heads.selection import select_and_fit
from featpipe.pipeline import config_from_dict, run_pipeline
from featpipe.pipeline.config import (
    FeaturesConfig,
    FinetuneConfig,
    PipelineConfig,
    ProbesConfig,
    SourceConfig,
)
from featpipe.pipeline.runner import FILE_KEYS, in_file_words
from featpipe.store.reader import not_finite_message
from featpipe.store.writer import write_arrays

TABLES = {
    "": PipelineConfig,
    "source": SourceConfig,
    "features": FeaturesConfig,
    "probes": ProbesConfig,
    "finetune": FinetuneConfig,
}


def _keys_by_name() -> dict[str, list[str]]:
    """Each setting name of a pipeline file and the dotted keys that set it."""
    keys: dict[str, list[str]] = {}
    for table, cls in TABLES.items():
        for field in dataclasses.fields(cls):
            if field.name not in TABLES:
                keys.setdefault(field.name, []).append(f"{table}.{field.name}".lstrip("."))
    return keys


def test_each_file_key_is_the_one_key_of_its_name():
    keys = _keys_by_name()
    for name, key in FILE_KEYS.items():
        assert keys[name] == [key], (name, keys[name])


def test_names_of_two_tables_stay_in_the_apis_words():
    """workers and batch_size are set in [features] and in [finetune]: the dead worker's
    message (extraction's, or fine-tuning's) does not say which."""
    keys = _keys_by_name()
    assert len(keys["workers"]) == len(keys["batch_size"]) == 2
    said = str(loop.worker_died("DataLoader worker (pid 7) is killed", 2, 5, Path("s.h5")))
    assert in_file_words(said) == said


def _raised(error, call) -> str:
    with pytest.raises(error) as caught:
        call()
    return str(caught.value)


def test_dtype_is_the_features_key_without_the_flag():
    said = _raised(NonFiniteFeaturesError, lambda: check_finite(np.full((2, 2), np.inf), "train"))
    assert 'extract with dtype="float32" (CLI: --dtype float32))' in said
    assert 'extract with features.dtype = "float32"), or leave' in in_file_words(said)


def test_reextracting_is_deleting_the_store_and_the_features_dtype():
    said = not_finite_message(Path("s.h5"), {"pooled": {"rows": 1, "ids": ["a"], "kind": "inf"}})
    assert in_file_words(said).endswith(
        'Extract it again after deleting the store, and with features.dtype = "float32" where '
        "the layer's activations exceed float16's 65504."
    )


def test_val_fraction_is_the_source_key_without_the_extract_command(tmp_path):
    labels, splits = [0, 1] * 4, ["train"] * 6 + ["test"] * 2
    store = write_arrays(tmp_path / "s.h5", {"pooled": np.eye(8)[:, :3]}, labels, splits, "ab")
    said = _raised(ConfigError, lambda: select_and_fit("logreg_stream", store, "pooled"))
    assert "(val_fraction=0.1; CLI: featpipe extract --val-fraction 0.1)" in said
    assert "Extract with a val split (source.val_fraction = 0.1), or use" in in_file_words(said)


def test_a_switch_is_the_finetune_key_with_tomls_true():
    said = _raised(ConfigError, lambda: convert_sync_bn(torch.nn.Linear(1, 1), torch.device("cpu")))
    assert said.startswith("sync_bn=True synchronises")
    assert in_file_words(said).startswith("finetune.sync_bn = true synchronises")


def test_a_parameter_named_with_its_flag_is_the_key_alone(image_folder, tmp_path):
    (tmp_path / "cache").write_text("not a folder")
    said = _raised(
        ConfigError,
        lambda: extractor.plan_extraction(str(image_folder), "toy", cache_dir=tmp_path / "cache"),
    )
    assert said.endswith("Choose another cache_dir (CLI: --cache-dir).")
    assert in_file_words(said).endswith("Choose another features.cache_dir.")


@pytest.mark.parametrize(
    "message",
    [
        "pass cache_dir=None to compute without a cache.",  # TOML has no None
        "mydtype=\"float32\" or features.dtype='x' or dtype=float16x",  # not the setting
    ],
)
def test_what_is_not_a_file_setting_is_left_as_it_is(message):
    assert in_file_words(message) == message


@pytest.fixture
def loud_backbone():
    """The toy backbone with pooled features beyond float16's 65504."""

    def build(spec):
        backbone = toy_backbone.build_toy(spec)
        with torch.no_grad():
            backbone.model.stage2[0].bias.fill_(1e6)
        return backbone

    register_backbone("toy_loud")(build)
    yield "toy_loud"
    unregister_backbone("toy_loud")


def test_a_pipeline_reads_the_float16_overflow_as_its_features_dtype(tmp_path, loud_backbone):
    """End to end: the run read 'Store the features as float32 (dtype="float32")'."""
    config = config_from_dict({
        "name": "loud", "out": str(tmp_path / "run"), "device": "cpu", "n_boot": 0,
        "source": {"data": "digits", "limits": {"train": 20, "val": 10, "test": 10}},
        "features": {"backbones": [loud_backbone], "image_size": 16, "workers": 0,
                     "cache_dir": str(tmp_path / "cache")},
        "probes": {"heads": ["knn"]},
    })  # fmt: skip
    with pytest.raises(NonFiniteFeaturesError) as caught:
        run_pipeline(config, progress=False, log=lambda _: None)
    said = str(caught.value)
    assert said.endswith('Store the features as float32 (features.dtype = "float32").'), said
