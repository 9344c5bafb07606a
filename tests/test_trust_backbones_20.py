"""The weights hash of a model with extra state is the same on every call and in every process
(a pickle is not: a tensor's holds its memory address, a set's follows the hash seed), extra
state it cannot encode is a ConfigError, and one LayerSpec is a layer request everywhere."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from toy_backbone import ToyNet

from featpipe.backbones import Backbone, Preprocessing
from featpipe.backbones.base import state_dict_sha256
from featpipe.backbones.layers import LayerSpec
from featpipe.errors import ConfigError
from featpipe.extract.extractor import layer_names

PRE = Preprocessing(resize=32, crop=32)


class WithExtraState(ToyNet):
    """ToyNet whose extra state holds a tensor, a set of strings and nested containers."""

    def __init__(self, state):
        super().__init__()
        self.state = state

    def get_extra_state(self):
        # A new tensor on each call, as from a module that builds its state when asked.
        return {k: v.clone() if torch.is_tensor(v) else v for k, v in self.state.items()}

    def set_extra_state(self, state) -> None:
        self.state = state


def extra_state() -> dict:
    return {
        "scale": torch.ones(3),
        "labels": {"cat", "dog", "cow", "hen", "pig", "owl"},
        "mean": np.arange(3, dtype=np.float32),
        "config": [("depth", 2), ("name", "toy"), ("eps", 1e-5), ("norm", None), ("bias", True)],
    }


def model() -> WithExtraState:
    torch.manual_seed(0)
    return WithExtraState(extra_state())


def test_extra_state_hashes_the_same_on_every_call():
    # Before: the tensor's pickle held its storage address, so each call gave another hash.
    m = model()
    bb = Backbone(spec="toy", model=m, preprocessing=PRE)
    assert state_dict_sha256(m) == bb.state_sha256 == state_dict_sha256(m)
    assert bb.with_current_weights() is bb


def test_extra_state_hashes_the_same_in_every_process():
    # Before: a set of strings pickles in hash-seed order, so each process gave another hash.
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import test_trust_backbones_20 as t; "
        "from featpipe.backbones.base import state_dict_sha256; "
        "print(state_dict_sha256(t.model()))"
    )
    here = str(Path(__file__).parent)
    hashes = {
        subprocess.run(
            [sys.executable, "-c", code, here],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert hashes == {state_dict_sha256(model())}


def test_extra_state_values_count():
    same = state_dict_sha256(model())
    m = model()
    m.state["scale"] = torch.full((3,), 2.0)
    assert state_dict_sha256(m) != same
    m = model()
    m.state["labels"] = m.state["labels"] | {"ant"}
    assert state_dict_sha256(m) != same
    m = model()
    m.state["config"] = [*m.state["config"][:-1], ("bias", 1)]  # True and 1 differ
    assert state_dict_sha256(m) != same


def test_extra_state_that_cannot_be_encoded_is_a_config_error():
    # Before: an unpicklable object (a lambda) ended in an AttributeError traceback.
    m = WithExtraState({"activation": lambda x: x})
    with pytest.raises(ConfigError, match=r"'_extra_state' holds a function.*get_extra_state"):
        Backbone(spec="toy", model=m, preprocessing=PRE)


def test_a_layer_spec_is_a_layer_request_for_layer_names():
    # Before: AttributeError: 'LayerSpec' object has no attribute 'strip'.
    spec = LayerSpec.parse("pooled")
    assert layer_names(spec) == layer_names([spec]) == layer_names("pooled") == ("pooled",)
    assert layer_names([LayerSpec("layer1", "avg"), "logits"]) == ("layer1:avg", "logits")
    assert LayerSpec.of(spec) is spec and LayerSpec.of(" pooled ") == spec
