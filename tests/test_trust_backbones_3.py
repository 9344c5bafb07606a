"""Trust review of backbones (3): mean pooling as the libraries pool, image processors that
featpipe cannot follow, weights paths told apart from tags, and .safetensors state dicts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from featpipe.backbones import get_backbone
from featpipe.backbones.timm_models import create, make_backbone
from featpipe.errors import ConfigError


def _tiny_vit(**kwargs):
    """A 2-block timm ViT at 32 px (random init, seed 0), as featpipe creates it."""
    torch.manual_seed(0)
    small = dict(img_size=32, depth=2, embed_dim=32, num_heads=2)
    return create("vit_tiny_patch16_224", **small, **kwargs)


def _hooked(model, module: str, x: torch.Tensor) -> torch.Tensor:
    seen = {}

    def hook(_m, _i, out) -> None:  # must return None: a value would replace the output
        seen.setdefault("out", out.detach().clone())

    handle = dict(model.named_modules())[module].register_forward_hook(hook)
    try:
        with torch.inference_mode():
            model(x)
    finally:
        handle.remove()
    return seen["out"]


# 'mean' leaves out register tokens, as timm's average pooling does ------------------------


def test_mean_pooling_leaves_out_register_tokens_as_timm_does():
    from timm.models.vision_transformer import global_pool_nlc

    model = _tiny_vit(reg_tokens=4, class_token=False, global_pool="avg")
    bb = make_backbone("timm:vit_reg4_gap_test@none", model)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    fm = bb.features(["norm", "blocks.0:mean", "pooled"])
    try:
        with torch.inference_mode():
            out = fm(x)
            final = model.forward_features(x)
            timm_avg = global_pool_nlc(final, "avg", model.num_prefix_tokens)
            timm_pooled = model.forward_head(final, pre_logits=True)
    finally:
        fm.remove()
    assert fm.poolings["norm"] == "mean"  # the default for a model without a class token
    # featpipe averaged the 4 register tokens with the patches
    torch.testing.assert_close(out["norm"], timm_avg)
    block = _hooked(model, "blocks.0", x)
    torch.testing.assert_close(out["blocks.0:mean"], block[:, 4:].mean(1))
    torch.testing.assert_close(out["pooled"], timm_pooled)  # timm's own head input


def test_only_models_with_register_tokens_get_a_new_identity():
    # Stores made when 'mean' averaged the register tokens must not be reused.
    reg = make_backbone(
        "timm:reg@none", _tiny_vit(reg_tokens=4, class_token=False, global_pool="avg")
    )
    assert reg.identity()["prefix_tokens"] == 4
    gap = make_backbone("timm:gap@none", _tiny_vit(class_token=False, global_pool="avg"))
    assert set(gap.identity()) == {"spec", "weights_sha256", "preprocessing", "token_pooling"}
    # a class token (and registers) keep 'cls' by default and their keys
    cls = make_backbone("timm:cls@none", _tiny_vit(reg_tokens=4))
    assert set(cls.identity()) == {"spec", "weights_sha256", "preprocessing"}
    for spec in ("timm:vit_tiny_patch16_224@none", "timm:resnet18@none"):
        assert set(get_backbone(spec, image_size=32).identity()) == {
            "spec",
            "weights_sha256",
            "preprocessing",
        }


# image processors that do not crop ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["CLIPImageProcessor", "BitImageProcessor", "ViTImageProcessor"])
def test_processor_that_keeps_the_aspect_ratio_is_refused(kind):
    tr = pytest.importorskip("transformers")
    from featpipe.backbones.hf_models import preprocessing_of

    processor = getattr(tr, kind)(size={"shortest_edge": 32}, do_center_crop=False)
    image = Image.fromarray(np.zeros((40, 60, 3), np.uint8))
    theirs = processor(images=image, return_tensors="pt")["pixel_values"]
    assert tuple(theirs.shape[-2:]) == (32, 48)  # not the 32 × 32 crop featpipe fed
    with pytest.raises(ConfigError, match=r"does not centre-crop.*do_center_crop=True"):
        preprocessing_of(processor)
    # the fix the message gives: a centre crop of the short side, as featpipe feeds
    fixed = getattr(tr, kind)(
        size={"shortest_edge": 32}, do_center_crop=True, crop_size={"height": 32, "width": 32}
    )
    pre = preprocessing_of(fixed)
    ours = pre.transform()(image)
    assert ours.shape == fixed(images=image, return_tensors="pt")["pixel_values"][0].shape
