"""timm models whose ``pooled`` is not the input of the Linear timm names as their classifier:
BatchNorm + Linear heads (LeViT, EfficientViT-MSRA, RepViT, SHViT, iFormer), against
``forward_head(pre_logits=True)``. Random init, shrunk where the architecture takes it, with
BatchNorm statistics that are not the identity (fresh ones would hide the norm)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("timm")

from featpipe.backbones.timm_models import create, make_backbone
from featpipe.backbones.weights import seeded


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


def _pre_logits(model, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model.forward_head(model.forward_features(x), pre_logits=True)


def _pooled(backbone, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return backbone.features("pooled")(x)["pooled"]


def _images(size: int) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))


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
