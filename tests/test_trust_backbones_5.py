"""Trust review of backbones (5): channels-last modules inside torchvision's Swin and MaxViT,
patch tokens before the class token joins them (BEiT's patch_embed, ConViT's local blocks),
and MambaOut's channels-first stem activation."""

from __future__ import annotations

import argparse

import pytest
import torch
from test_trust_backbones_4 import _features
from torchvision import models

from featpipe.backbones import get_backbone
from featpipe.backbones.timm_models import create, make_backbone
from featpipe.cli.backbones import run_layers
from featpipe.errors import ConfigError


def _tiny_timm(name: str, size: int = 32, **kwargs):
    torch.manual_seed(0)
    model = create(name, pretrained_cfg_overlay={"input_size": (3, size, size)}, **kwargs)
    return make_backbone(f"timm:{name}@none", model)


def _listed_maps_read_channels_first(bb) -> None:
    # featpipe feeds square images: a C×H×W map it lists has H == W (a listed H×W×C did not)
    for name, shape in bb.describe_layers():
        if len(shape) == 3:
            assert shape[1] == shape[2], (name, shape)


@pytest.mark.parametrize("name", ["swin_t", "swin_v2_t"])
def test_torchvision_swin_modules_inside_blocks_are_refused(name):
    bb = get_backbone(f"torchvision:{name}@none", image_size=64)
    ident = bb.identity()  # keys kept: the stages and blocks turned to B×C×H×W as before
    assert set(ident) == {"spec", "weights_sha256", "preprocessing", "nhwc_layers"}
    assert (
        "features.1.0" in ident["nhwc_layers"] and "features.1.0.attn" not in ident["nhwc_layers"]
    )
    # B×H×W×C: 'avg' averaged W and C, giving 16 values of features.1.0.norm1
    for layer in ("features.1.0.norm1", "features.1.0.attn", "features.1.0.mlp:avg"):
        with pytest.raises(ConfigError, match=r"channels last.*:none'"):
            bb.features([layer])
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    out, poolings = _features(bb, ["features.1.0.norm1:none", "features.1", "features.0.0"], x)
    assert out["features.1.0.norm1:none"].shape == (2, 16 * 16 * 96)
    assert out["features.1"].shape == (2, 96) and poolings["features.1"] == "avg"
    listed = dict(bb.describe_layers())
    assert "features.1.0.mlp" not in listed and listed["features.1"] == (96, 16, 16)
    assert listed["features.2.reduction"] == (192, 8, 8)  # turned to B×C×H×W before
    _listed_maps_read_channels_first(bb)


def test_torchvision_maxvit_window_attention_is_refused(monkeypatch):
    torch.manual_seed(0)
    tiny = models.MaxVit(
        input_size=(32, 32), stem_channels=8, partition_size=2, block_channels=[8, 16],
        block_layers=[1, 1], head_dim=4, stochastic_depth_prob=0.0, num_classes=3,
    )  # fmt: skip
    monkeypatch.setattr(models, "get_model", lambda name, weights=None: tiny)
    bb = get_backbone("torchvision:maxvit_t@none", image_size=32)
    attn = "blocks.0.layers.0.layers.window_attention"
    # B×windows×tokens×C: 'avg' averaged tokens and channels, giving one value per window
    for layer in (f"{attn}.attn_layer", f"{attn}.mlp_layer", f"{attn}.partition_op"):
        with pytest.raises(ConfigError, match="channels last"):
            bb.features([layer])
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out, poolings = _features(bb, [attn, f"{attn}.mlp_layer:none"], x)
    assert poolings[attn] == "avg" and out[attn].shape == (2, 8)  # departitioned: B×C×H×W
    _listed_maps_read_channels_first(bb)


def test_patch_tokens_before_the_class_token_are_not_read_as_it(capsys):
    # BEiT takes no dynamic_img_size: patch_embed gives B×N×C patch tokens, and 'cls' (the
    # default for tokens) read patch token 0 as the class token
    bb = _tiny_timm("beit_base_patch16_224", size=32, img_size=32, depth=1, embed_dim=32,
                    num_heads=2)  # fmt: skip
    assert set(bb.identity()) == {"spec", "weights_sha256", "preprocessing"}  # keys kept
    for layer in ("patch_embed", "patch_embed.norm", "patch_embed:cls"):
        with pytest.raises(ConfigError, match=r"before the class token.*'patch_embed.*:mean'"):
            bb.features([layer])
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out, poolings = _features(bb, ["patch_embed:mean", "blocks.0", "pooled"], x)
    assert poolings["blocks.0"] == "cls"  # the class token has joined: as before
    with torch.inference_mode():
        patches = bb.model.patch_embed(x)
    assert patches.shape == (2, 4, 32)
    torch.testing.assert_close(out["patch_embed:mean"], patches.mean(1))
    bb.model.pretrained_cfg = {**bb.model.pretrained_cfg, "input_size": (3, 32, 32)}
    args = argparse.Namespace(spec="timm:x", image_size=None, filter="patch_embed")
    import featpipe.cli.backbones as cli

    real = cli.get_backbone
    cli.get_backbone = lambda spec, image_size=None: bb
    try:
        run_layers(args)
    finally:
        cli.get_backbone = real
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()
            if line.startswith("patch_embed")}  # fmt: skip
    assert rows["patch_embed"] == ["4×32", "ask", ":mean", "32"]
    assert rows["patch_embed.proj"] == ["32×2×2", "avg", "32"]


def test_convit_local_blocks_before_the_class_token_refuse_cls():
    # ConViT joins the class token at block local_up_to_layer, inside `blocks`
    bb = _tiny_timm("convit_tiny", img_size=32, depth=2, local_up_to_layer=1, embed_dim=16,
                    num_heads=2)  # fmt: skip
    with pytest.raises(ConfigError, match=r"'blocks.0:mean'"):
        bb.features(["blocks.0"])
    bb.features(["blocks.0:mean", "blocks.1"]).remove()  # blocks.1 has the class token


def test_mambaout_stem_activation_is_a_channels_first_map():
    bb = _tiny_timm("mambaout_femto", size=64, depths=(1, 1, 1, 1))
    assert "stem.act" not in bb.channels_last_layers
    with pytest.raises(ConfigError, match="channels last"):
        bb.features(["stem.norm1"])  # B×H×W×C, as before
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    seen = {}

    def hook(_m, _i, out) -> None:  # must return None: a value would replace the output
        seen.setdefault("out", out.clone())

    handle = bb.model.stem.act.register_forward_hook(hook)
    try:
        out, _ = _features(bb, ["stem.act"], x)
    finally:
        handle.remove()
    assert seen["out"].shape == (2, 24, 32, 32)
    torch.testing.assert_close(out["stem.act"], seen["out"].mean(dim=(2, 3)))
    assert dict(bb.describe_layers())["stem.act"] == (24, 32, 32)
