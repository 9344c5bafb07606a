"""Review fixes: torchvision ViT 'avg', hf pooler by the tower's name, image-size advice."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision import models

from featpipe.backbones import get_backbone
from featpipe.backbones.hf_models import _check_loaded
from featpipe.errors import ConfigError


def test_avg_of_a_torchvision_vits_tokens_leaves_out_its_class_token(monkeypatch):
    # torchvision ViTs did not say they have one class token, so 'avg' of tokens was refused
    def small_vit(name, weights=None, **kw):
        torch.manual_seed(0)
        return models.VisionTransformer(32, 8, 2, 2, 32, 64, **kw)

    monkeypatch.setattr(models, "get_model", small_vit)
    bb = get_backbone("torchvision:vit_b_16@none", image_size=32)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        out = bb.features(["encoder.ln:avg", "encoder.ln:mean"])(x)
        tokens = {}
        bb.model.encoder.ln.register_forward_hook(lambda m, i, o: tokens.setdefault("ln", o))
        bb.model(x)
    assert tokens["ln"].shape[1] == 1 + 16  # the class token, then 4×4 patches
    assert torch.allclose(out["encoder.ln:avg"], tokens["ln"][:, 1:].mean(dim=1), atol=1e-6)
    # ':mean' is unchanged: every token, the class token included
    assert torch.allclose(out["encoder.ln:mean"], tokens["ln"].mean(dim=1), atol=1e-6)


class _ProjectionFirst(nn.Module):
    """A model that registers its projection before its vision tower."""

    def __init__(self):
        super().__init__()
        self.visual_projection = nn.Linear(4, 2)
        self.vision_model = nn.Module()
        self.vision_model.encoder = nn.Linear(4, 4)
        self.vision_model.pooler = nn.Linear(4, 4)


def test_a_missing_pooler_is_dropped_when_the_projection_is_registered_first():
    # the pooler's prefix was taken from the first of {tower, projection}: 'visual_projection.'
    model = _ProjectionFirst()
    info = {"missing_keys": ["vision_model.pooler.weight", "vision_model.pooler.bias"]}
    _check_loaded(
        model, model.vision_model, model.visual_projection, {**info, "mismatched_keys": []}, "hf:x"
    )
    assert model.vision_model.pooler is None


def test_an_image_size_a_vits_patch_does_not_divide_names_the_nearest_that_work():
    with pytest.raises(ConfigError) as err:
        get_backbone("timm:vit_tiny_patch16_224@none", image_size=100)
    text = str(err.value)
    assert ".)." not in text and "(16))." in text  # the cause's own '.' was doubled
    assert "e.g. 96 or 112 (multiples of its patch size 16)" in text
    assert get_backbone("timm:vit_tiny_patch16_224@none", image_size=112).preprocessing.crop == 112
