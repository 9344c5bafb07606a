"""Fine-tuning modes say what they do: ``bn`` on a backbone without batch norm, ``partial:N``
with every stage frozen, and a best.pt left by another run in the same folder."""

from __future__ import annotations

import warnings

import pytest
import torch
from finetune_child import synthetic_source
from torch import nn

from featpipe.backbones import Backbone, Preprocessing, get_backbone, register_backbone
from featpipe.backbones.registry import _BUILTINS
from featpipe.finetune import FineTuner, Mode
from featpipe.finetune.freezing import freeze
from featpipe.finetune.tuner import _attach_head

PARAMS = dict(epochs=1, batch_size=8, lr=0.05, patience=None, verbose=0)


class NormNet(nn.Module):
    """A toy CNN with GroupNorm only (as a ConvNeXt or ViT has LayerNorm): no batch norm."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.GroupNorm(2, 8))
        self.stage1 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.stage1(self.stem(x))).flatten(1))


if "toy_nobn" not in _BUILTINS:

    @register_backbone("toy_nobn")
    def _build(spec) -> Backbone:
        torch.manual_seed(0)
        return Backbone(
            spec=str(spec),
            model=NormNet(),
            preprocessing=Preprocessing(resize=36, crop=32),
            stages=["stem", "stage1"],
        )


@pytest.fixture(scope="module")
def source():
    return synthetic_source()


def test_bn_mode_without_batch_norm_warns_and_is_recorded(source):
    with pytest.warns(UserWarning, match=r"toy_nobn in mode 'bn': the backbone has no batch-norm"):
        ft = FineTuner("toy_nobn", mode="bn", **PARAMS).fit(source)
    assert "trains exactly like 'full'" in ft.history_[0]["mode_note"]
    # On a backbone with batch norm, bn means what it says: no note, no warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ft = FineTuner("toy", mode="bn", **PARAMS).fit(source)
    assert "mode_note" not in ft.history_[0]


def _trainable(spec: str, n: int | None) -> dict[str, int]:
    """Trainable parameters (by name) of ``spec`` with a new 3-class head under partial:n
    (every stage when n is None)."""
    backbone = get_backbone(spec)
    model, head = _attach_head(backbone, 3, 0.0)
    mode = Mode("partial", n or len(backbone.stages))
    freeze(model, mode, backbone.stages, head)
    return {k: p.numel() for k, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(
    ("spec", "before_pooled"),
    [
        # MobileNetV3: pooled is classifier.0 (Linear + Hardswish)'s output, 1024 wide.
        ("torchvision:mobilenet_v3_small@none", "classifier.0"),
        # ConvNeXt: the final LayerNorm sits in the classifier, before the Linear.
        ("torchvision:convnext_tiny@none", "classifier.0"),
    ],
)
def test_partial_with_every_stage_frozen_freezes_what_computes_pooled(spec, before_pooled):
    trainable = _trainable(spec, None)
    head = get_backbone(spec).classifier
    assert trainable and all(k.startswith(head + ".") for k in trainable), sorted(trainable)
    # With a stage left training, what follows it trains too.
    assert f"{before_pooled}.weight" in _trainable(spec, 1)


def test_partial_every_stage_keeps_the_pre_pooled_dropout_off():
    backbone = get_backbone("torchvision:mobilenet_v3_small@none")
    model, head = _attach_head(backbone, 3, 0.0)
    frozen = freeze(model, Mode("partial", len(backbone.stages)), backbone.stages, head)
    dropout = model.get_submodule("classifier.2")  # before classifier.3, the new head
    assert any(m is dropout for m in frozen.eval_modules)
