"""Backbones' probe passes (the forward passes outside extraction) and is_count's range."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from featpipe.backbones import Backbone, Preprocessing
from featpipe.errors import ConfigError
from featpipe.validation import is_count


def _vit(dtype: torch.dtype = torch.float32) -> Backbone:
    torch.manual_seed(0)
    model = VisionTransformer(
        img_size=32,
        patch_size=8,
        embed_dim=16,
        depth=1,
        num_heads=2,
        num_classes=3,
        dynamic_img_size=True,
    ).to(dtype)
    return Backbone(
        spec="toyvit", model=model, preprocessing=Preprocessing(resize=32, crop=32), patch_start=1
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_probe_passes_feed_the_models_dtype(dtype):
    bb = _vit(dtype)
    # it said 'does not run on 48×48 images (Input type (float) and bias type (double)...)'
    assert bb.at_size(48).preprocessing.crop == 48
    # a bare RuntimeError traceback from the token probe
    bb.features(["norm:avg"]).remove()
    assert dict(bb.describe_layers())["norm"] == (17, 16)


def test_out_of_memory_in_the_size_probe_is_not_called_a_wrong_size(monkeypatch):
    bb = _vit()

    def oom(*_a, **_k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(bb.model, "forward", oom)
    with pytest.raises(torch.OutOfMemoryError):
        bb.at_size(40)


def test_a_wrong_size_still_gets_the_size_advice():
    bb = _vit()
    with pytest.raises(ConfigError, match=r"does not run on 36×36 images.*multiples of its patch"):
        bb.at_size(36)


def _calls(model: nn.Module) -> list[int]:
    calls: list[int] = []
    model.register_forward_pre_hook(lambda _m, inp: calls.append(inp[0].shape[0]))
    return calls


def test_avg_of_tokens_costs_one_probe_pass_as_cls_does():
    # two batch-2 passes at the same size (full_token_layers, then patch_only_layers)
    for layer in ("norm:cls", "norm:avg"):
        bb = _vit()
        calls = _calls(bb.model)
        bb.features([layer]).remove()
        assert len(calls) == 1, layer


def test_at_size_leaves_the_model_in_eval_as_the_backbone_says():
    bb = _vit()
    bb.model.train()
    sized = bb.at_size(40)
    assert sized.model is bb.model and not bb.model.training


def test_is_count_takes_any_size_of_whole_number():
    assert is_count(10**400) and is_count(3) and is_count(3.0)
    assert not is_count(-(10**400)) and not is_count(True) and not is_count(2.5)
    assert not is_count(float("inf")) and not is_count(float("nan")) and not is_count("3")
