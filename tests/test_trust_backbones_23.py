"""timm models whose ``pooled`` is not the input of the Linear timm names as their classifier,
against ``forward_head(pre_logits=True)``: BatchNorm + Linear heads (LeViT, EfficientViT-MSRA,
RepViT, SHViT, iFormer) and one head per branch (CrossViT, EfficientViM).
Random init, shrunk where the architecture takes it, with BatchNorm statistics that are not
the identity (fresh ones would hide the norm)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

pytest.importorskip("timm")

from test_trust_backbones_22 import _images, _pooled, _pre_logits

from featpipe.backbones.timm_models import create, make_backbone
from featpipe.backbones.weights import seeded
from featpipe.errors import ConfigError


def _backbone(name: str, **shrink):
    model = seeded(lambda: create(name, **shrink))
    _trained_norms(model)
    return make_backbone(f"timm:{name}@none", model), model


def _trained_norms(model: nn.Module) -> None:
    """BatchNorm statistics and affine parameters as training leaves them: not 0 and 1."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                c = m.running_mean.shape[0]
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(c, generator=g) * 0.5)


@pytest.mark.parametrize(
    "name, shrink",
    [
        ("levit_128s", {"depth": (1, 1, 1)}),  # distilled: head and head_dist share the input
        ("efficientvit_m0", {"depth": (1, 1, 1)}),
        ("repvit_m0_9", {"depth": (1, 1, 1, 1)}),
        ("shvit_s1", {"depth": (1, 1, 1)}),
        ("iformer_t", {}),
    ],
)
def test_norm_linear_head_pooled_is_timms_pre_logits(name, shrink):
    """timm names the Linear of a BatchNorm + Linear head as the classifier, but its
    pre-logits are the head's input; ``pooled`` read the Linear's input, after the norm."""
    backbone, model = _backbone(name, **shrink)
    x = _images(backbone.preprocessing.crop)
    assert torch.equal(_pooled(backbone, x), _pre_logits(model, x))
    # the classifier fine-tuning replaces is still the Linear; the new reading has its own key
    assert isinstance(dict(model.named_modules())[backbone.classifier], nn.Linear)
    assert backbone.identity()["pooled_inputs"] == ["head"]
    assert ("pooled", tuple(_pre_logits(model, x).shape[1:])) in backbone.describe_layers()


@pytest.mark.parametrize(
    "name, shrink",
    [
        ("resnet18", {}),
        ("vit_tiny_patch16_224", {"depth": 1}),
        ("convnext_atto", {"depths": (1, 1, 1, 1)}),  # its head's norm comes before pre-logits
    ],
)
def test_other_heads_read_the_classifiers_input_under_their_old_keys(name, shrink):
    backbone, model = _backbone(name, **shrink)
    x = _images(backbone.preprocessing.crop)
    assert torch.equal(_pooled(backbone, x), _pre_logits(model, x))
    assert "pooled_inputs" not in backbone.identity()


def test_crossvit_pooled_joins_both_branches_class_tokens():
    """CrossViT's pre-logits are the class tokens of its two branches joined (96 + 192 wide
    when shrunk); ``pooled`` read the input of head.1, the second branch's token alone."""
    backbone, model = _backbone("crossvit_tiny_240", depth=((1, 1, 0),))
    x = _images(backbone.preprocessing.crop)
    expected = _pre_logits(model, x)
    fm = backbone.features(["pooled", "logits"])
    for _ in range(2):  # each pass puts its own parts together
        with torch.inference_mode():
            out = fm(x)
        assert torch.equal(out["pooled"], expected)
    assert backbone.identity()["pooled_inputs"] == ["head.0", "head.1"]
    assert backbone.identity()["pooled_combine"] == "cat"
    assert ("pooled", tuple(expected.shape[1:])) in backbone.describe_layers()


def test_a_pooled_combine_that_is_not_offered_is_refused():
    backbone, _ = _backbone("resnet18")
    with pytest.raises(ConfigError, match=r"pooled_combine.*'sum'.*mean"):
        dataclasses.replace(backbone, pooled_inputs=("fc",), pooled_combine="sum")


@pytest.mark.parametrize("name", ["efficientvim_m1", "efficientvim_m1_dist"])
def test_efficientvim_pooled_joins_every_heads_input(name):
    """EfficientViM's pre-logits join the averages its heads read (one per stage and the
    last); ``pooled`` read the input of heads.3 alone (320 of 960 wide)."""
    backbone, model = _backbone(name)
    x = _images(backbone.preprocessing.crop)
    assert torch.equal(_pooled(backbone, x), _pre_logits(model, x))
    assert backbone.identity()["pooled_inputs"] == [f"heads.{i}" for i in range(4)]
