"""A model whose state dict holds extra state (``get_extra_state``: an object, not a tensor)
builds a Backbone and extracts; its weights hash counts that state by a fixed encoding, and the
hash of ordinary models is the one it was."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from toy_backbone import ToyNet

from featpipe.backbones import Backbone, Preprocessing
from featpipe.backbones.base import state_dict_sha256
from featpipe.data import ArraySource
from featpipe.extract import extract

PRE = Preprocessing(resize=32, crop=32)


class WithExtraState(ToyNet):
    """ToyNet with extra state in its state dict (a tokenizer's vocabulary, a config)."""

    def __init__(self, vocabulary: list[str]):
        super().__init__()
        self.vocabulary = vocabulary

    def get_extra_state(self) -> dict:
        return {"vocabulary": self.vocabulary}

    def set_extra_state(self, state: dict) -> None:
        self.vocabulary = state["vocabulary"]


def test_a_model_with_extra_state_builds_a_backbone_and_extracts(tmp_path):
    # Before: AttributeError ('dict' object has no attribute 'is_meta'), then 'detach'.
    torch.manual_seed(0)
    model = WithExtraState(["cat", "dog"])
    assert "_extra_state" in model.state_dict()
    bb = Backbone(spec="vocab", model=model, preprocessing=PRE)
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    source = ArraySource(images, [0, 1] * 2, splits=["train"] * 4)
    store = extract(source, bb, "pooled", cache_dir=tmp_path, dtype="float32", progress=False)
    assert store.complete and store.layers == ["pooled"]
    # The extra state is part of the weights' identity: another vocabulary, another hash.
    same = state_dict_sha256(model)
    model.vocabulary = ["cat", "cow"]
    assert state_dict_sha256(model) != same
    model.vocabulary = ["cat", "dog"]
    assert state_dict_sha256(model) == same


def test_the_weights_hash_of_a_model_without_extra_state_is_unchanged():
    # Store keys hold this hash: ordinary models keep the value the code gave before.
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 2))
    with torch.no_grad():
        for i, (_, value) in enumerate(sorted(model.state_dict().items())):
            if value.is_floating_point():
                value.copy_(torch.arange(value.numel()).reshape(value.shape) / (i + 1))
    model.half()[3].double()  # float16, float64 and the batch norm's int64 counter
    assert state_dict_sha256(model) == (
        "5048b0c1cbed0bb34cbbe48fde6b9808d3f225931051a06858300dff441860b6"
    )
