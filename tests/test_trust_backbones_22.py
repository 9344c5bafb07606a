"""timm models whose ``pooled`` or preprocessing could differ from timm's own: distilled DeiT and
PiT (two heads), VOLO (an auxiliary head), legacy Xception and TNT against
``forward_head(pre_logits=True)``, and the resize featpipe computes from ``crop_pct`` against
timm's eval transform. Random init, shrunk where the architecture takes it, for speed."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("timm")

from featpipe.backbones.timm_models import create, make_backbone, preprocessing_of
from featpipe.backbones.weights import seeded
from featpipe.errors import ConfigError


def _backbone(name: str, **shrink):
    model = seeded(lambda: create(name, **shrink))
    return make_backbone(f"timm:{name}@none", model), model


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
        ("deit_tiny_distilled_patch16_224", {"depth": 2}),
        ("pit_ti_distilled_224", {"depth": (1, 1, 1)}),
    ],
)
def test_distilled_pooled_is_timms_pre_logits(name, shrink):
    """timm's pre-logits of a distilled model are the mean of its class and distillation
    tokens; ``pooled`` read the distillation token alone (the input of head_dist)."""
    backbone, model = _backbone(name, **shrink)
    x = _images(backbone.preprocessing.crop)
    assert torch.equal(_pooled(backbone, x), _pre_logits(model, x))
    # the new reading has its own store key; a plain ViT's key records nothing new
    assert backbone.identity()["pooled_inputs"] == ["head", "head_dist"]
    plain, _ = _backbone("vit_tiny_patch16_224", depth=1)
    assert "pooled_inputs" not in plain.identity()


def test_distilled_pooled_beside_other_layers_and_batches():
    """The two halves of ``pooled`` are put together per forward pass: a second batch and
    another layer in the same request read their own images."""
    backbone, model = _backbone("deit_tiny_distilled_patch16_224", depth=1)
    fm = backbone.features(["pooled", "blocks.0"])
    for seed in (1, 2):
        x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(seed))
        with torch.inference_mode():
            out = fm(x)
        assert torch.equal(out["pooled"], _pre_logits(model, x))
        assert out["blocks.0"].shape == (3, 192)
    assert ("pooled", (192,)) in backbone.describe_layers()


def test_volo_pooled_is_the_class_token_without_the_aux_head():
    """VOLO's forward adds the aux tokens' max to the logits only: its pre-logits are the
    class token, which ``pooled`` (the input of head) reads. Fine as it was."""
    backbone, model = _backbone("volo_d1_224")
    x = _images(backbone.preprocessing.crop)
    assert backbone.classifier == "head"
    assert torch.equal(_pooled(backbone, x), _pre_logits(model, x))
    assert "pooled_inputs" not in backbone.identity()


def test_legacy_xception_pooled_and_layers():
    """legacy_xception: ``pooled`` is its global average pool of act4, as timm's; its stage
    taps (act2, block2, act4) are listed. Fine as it was."""
    backbone, model = _backbone("legacy_xception")
    x = _images(96)
    assert torch.equal(_pooled(backbone.at_size(96), x), _pre_logits(model, x))
    listed = dict(backbone.at_size(96).describe_layers())
    assert listed["act4"] == (2048, 3, 3) and listed["block2"] == (256, 12, 12)
    assert listed["pooled"] == (2048,)


def test_tnt_pooled_and_norm1_proj():
    """TNT: ``pooled`` is its class token after norm, as timm's; norm1_proj gives the patch
    tokens before the class token joins them, so its default pooling ('cls', a patch) is
    refused and ':mean' is their average; a block's output (pixel tokens first, one row per
    patch) is neither listed nor read. Fine as it was."""
    backbone, model = _backbone("tnt_s_patch16_224", depth=1)
    x = _images(224)
    assert torch.equal(_pooled(backbone, x), _pre_logits(model, x))
    with torch.inference_mode():
        pixels = model.pixel_embed(x, model.pixel_pos)
        tokens = model.norm1_proj(pixels.reshape(2, model.num_patches, -1))
        got = backbone.features("norm1_proj:mean")(x)["norm1_proj:mean"]
    assert torch.allclose(got, tokens.mean(1))
    with pytest.raises(ConfigError, match="before the class token joins"):
        backbone.features("norm1_proj")
    listed = dict(backbone.describe_layers())
    assert listed["norm1_proj"] == (196, 384) and "blocks.0" not in listed
    with pytest.raises(ConfigError, match="not one row of features"), torch.inference_mode():
        backbone.features("blocks.0")(x)


def test_resize_matches_timms_eval_transform():
    """The resize featpipe computes from a pretrained_cfg (floor(crop / crop_pct)) is the one
    timm's eval transform uses, for a spread of pretrained configs (every 7th, and every one
    with a crop_mode or an odd crop_pct); crop and interpolation too."""
    import timm
    from timm.data import create_transform, resolve_data_config
    from timm.models import get_pretrained_cfg
    from torch import nn

    names = timm.list_pretrained()
    compared = 0
    for i, name in enumerate(names):
        cfg = get_pretrained_cfg(name).to_dict()
        unusual = cfg.get("crop_mode") not in (None, "center") or cfg.get("crop_pct") not in (
            0.875,
            0.9,
            1.0,
        )
        if i % 7 and not unusual:
            continue
        model = nn.Module()
        model.pretrained_cfg = cfg
        try:
            pre = preprocessing_of(model)
        except ConfigError:  # non-square inputs or crop_mode 'border': refused, not wrong
            continue
        resize, crop = create_transform(**resolve_data_config({}, model=model)).transforms[:2]
        want = resize.size if isinstance(resize.size, int) else list(resize.size)
        got = pre.resize_size[0] if pre.crop_mode == "center" else pre.resize_size
        assert (got, crop.size) == (want, (pre.crop, pre.crop)), name
        assert resize.interpolation.value == pre.interpolation, name
        compared += 1
    assert compared > 300


def test_resize_at_another_size_matches_timm():
    """At another input size timm keeps crop_pct (floor(size / crop_pct)); featpipe kept the
    fraction crop / resize and rounded, a pixel off for 3 in 10 (config, size) pairs (BEiT's
    0.9 at 256: 283, not 284). The store key follows the resize."""
    import timm
    from timm.data import create_transform, resolve_data_config
    from timm.models import get_pretrained_cfg
    from torch import nn

    compared = 0
    for name in timm.list_pretrained()[::9]:
        model = nn.Module()
        model.pretrained_cfg = get_pretrained_cfg(name).to_dict()
        try:
            pre = preprocessing_of(model)
        except ConfigError:
            continue
        for size in (96, 160, 256, 384):
            args = {"input_size": (3, size, size)}
            resize = create_transform(**resolve_data_config(args, model=model)).transforms[0]
            want = resize.size if isinstance(resize.size, int) else resize.size[0]
            assert pre.at_size(size).resize == want, (name, size)
            compared += 1
    assert compared > 500
    beit = nn.Module()
    beit.pretrained_cfg = get_pretrained_cfg("beit_base_patch16_224.in22k_ft_in22k_in1k").to_dict()
    sized = preprocessing_of(beit).at_size(256)
    assert sized.to_dict()["resize"] == 284 and "crop_pct" not in sized.to_dict()
    assert preprocessing_of(beit).to_dict()["resize"] == 248  # the weights' size: unchanged
