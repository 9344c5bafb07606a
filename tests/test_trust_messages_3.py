"""Heads', fine-tuning's probe and report's messages in each caller's words: Python its
parameters, the command line its flags (featpipe.cli.as_flags). Library code named flags
(--few-shot, --dtype, --seed, --decode, --layer, --data-path, --out) a Python caller has not."""

from __future__ import annotations

import argparse
import types

import numpy as np
import pytest

from featpipe.cli import as_flags, build_parser
from featpipe.errors import (
    ConfigError,
    HeadMismatchError,
    NonFiniteFeaturesError,
    StoreMismatchError,
)
from featpipe.finetune import probe
from featpipe.heads import persistence
from featpipe.heads.fewshot import require_k_per_class
from featpipe.heads.finite import check_finite
from featpipe.heads.registry import check_seed
from featpipe.report import check_run_folder


def command(name: str) -> argparse.ArgumentParser:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise LookupError(name)


def test_too_few_examples_for_few_shot_names_k_and_the_flag_with_a_value_that_works():
    """Python read 'Lower --few-shot'; few_shot's parameter is k."""
    data = types.SimpleNamespace(classes=None, class_name=str)
    with pytest.raises(ConfigError) as caught:
        require_k_per_class(data, 5, np.array([0] * 5 + [1] * 3))
    said = str(caught.value)
    assert said.endswith("Use k=3 or less (CLI: --few-shot 3), or drop those classes.")
    with pytest.raises(ConfigError, match=r"has 0\. Drop those classes\.$"):
        require_k_per_class(types.SimpleNamespace(classes=[0, 1], class_name=str), 2, np.zeros(4))


def test_non_finite_features_name_the_dtype_setting_and_its_flag():
    """Python read 'extract with --dtype float32'; probe and predict have no --dtype, so
    as_flags cannot give it: the message names both."""
    with pytest.raises(NonFiniteFeaturesError) as caught:
        check_finite(np.array([[np.nan], [1.0]]), "train")
    said = str(caught.value)
    assert 'extract with dtype="float32" (CLI: --dtype float32))' in said
    assert as_flags(said, command("probe")) == said


def test_a_negative_seed_names_no_flag_and_the_command_line_its_own():
    """Python read 'Use e.g. --seed 0.'."""
    with pytest.raises(ConfigError) as caught:
        check_seed(-1)
    said = str(caught.value)
    assert said == "seed must be an integer >= 0; got -1."
    assert as_flags(said, command("probe")) == "--seed must be an integer >= 0; got -1."


def test_features_computed_otherwise_are_warned_without_a_flag():
    """Python read 'the same --decode and device'."""
    with pytest.warns(UserWarning) as caught:
        persistence.warn_other_compute({"compute": {"decode": "fast"}}, {"decode": "exact"}, "here")
    said = str(caught[0].message)
    assert said.endswith("(the same decode and device).") and "--" not in said


def test_a_head_on_joined_layers_names_one_layer_as_python_and_the_command_line_give_it():
    """Python read '(e.g. --layer pooled)'."""
    with pytest.raises(HeadMismatchError) as caught:
        persistence._require_one_layer({"layer": "pooled+blocks.5:avg"})
    assert str(caught.value).endswith('(e.g. layer="pooled"; CLI: --layer pooled).')


def test_probe_features_from_another_store_name_data_path_as_a_setting(monkeypatch):
    """Python read '(layer pooled, --data-path cpu)'."""
    monkeypatch.setattr(probe, "extracted_from", lambda *_: True)
    store = types.SimpleNamespace(path="p.h5", layers=[], attrs={}, skipped=dict)
    identity = {"spec": "toy", "weights_sha256": None, "preprocessing": None}
    backbone = types.SimpleNamespace(identity=lambda: identity)
    with pytest.raises(StoreMismatchError) as caught:
        probe.check_store(store, backbone, source=None)
    said = str(caught.value)
    assert 'with its "pooled" layer and data_path="cpu" (CLI: featpipe extract --data-path' in said
    assert "(layer pooled, --data-path cpu)" not in said


def test_a_blocked_run_folder_names_where_each_caller_gives_another(tmp_path):
    """Python (write_report's run_dir) read 'another run folder (--out)', and `featpipe
    report` has no --out."""
    (tmp_path / "results.jsonl").mkdir()
    with pytest.raises(ConfigError) as caught:
        check_run_folder(tmp_path)
    said = str(caught.value)
    assert said.endswith("give another run folder (a pipeline's out; CLI: featpipe run --out).")
