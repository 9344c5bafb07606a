"""Trust review of backbones (4): channels-last layers that featpipe cannot pool, layers before
a late class token (CaiT, XCiT), and LeViT's image processor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from featpipe.backbones.timm_models import create, make_backbone
from featpipe.errors import ConfigError


def _tiny(name: str, size: int = 32, **kwargs):
    """A timm model at ``size`` px (random init, seed 0), as featpipe creates it."""
    torch.manual_seed(0)
    overlay = {"input_size": (3, size, size)}
    model = create(name, img_size=size, pretrained_cfg_overlay=overlay, **kwargs)
    return make_backbone(f"timm:{name}@none", model)


def _features(bb, layers, x):
    fm = bb.features(layers)
    try:
        with torch.inference_mode():
            return fm(x), dict(fm.poolings)
    finally:
        fm.remove()


def test_channels_last_patch_embedding_is_tapped_whole_or_not_at_all():
    # dynamic_img_size ViTs give B×H×W×C patch maps: 'avg' averaged over W and C (4 values)
    bb = _tiny("vit_tiny_patch16_224", depth=2, embed_dim=32, num_heads=2, size=64)
    ident = set(bb.identity())
    assert ident == {"spec", "weights_sha256", "preprocessing"}  # keys kept
    for layer in ("patch_embed", "patch_embed.norm", "patch_embed:avg", "patch_embed:grid:2"):
        with pytest.raises(ConfigError, match=r"channels last.*'patch_embed(\.norm)?:none'"):
            bb.features([layer])
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    out, _ = _features(bb, ["patch_embed:none", "patch_embed.proj", "blocks.0"], x)
    assert out["patch_embed:none"].shape == (2, 4 * 4 * 32)  # as before: flattened H, W, C
    proj = bb.model.patch_embed.proj(x)
    torch.testing.assert_close(out["patch_embed.proj"], proj.mean(dim=(2, 3)))
    listed = dict(bb.describe_layers())  # no H×W×C shape that reads as C×H×W
    assert "patch_embed" not in listed and "patch_embed.norm" not in listed
    assert listed["patch_embed.proj"] == (32, 4, 4)


def test_channels_last_blocks_inside_swin_stages_are_refused():
    bb = _tiny("swin_tiny_patch4_window7_224", size=56, depths=(1, 1, 1, 1))
    with pytest.raises(ConfigError, match="channels last"):
        bb.features(["layers.0.blocks.0"])  # B×H×W×C: avg gave H values
    bb.features(["layers.0", "layers.0.blocks.0:none", "patch_embed.proj"]).remove()


@pytest.mark.parametrize(
    "name, options, stage",
    [
        ("cait_xxs24_224", {"depth": 2, "embed_dim": 32, "num_heads": 2}, "blocks_token_only"),
        ("xcit_nano_12_p16_224", {"depth": 2}, "cls_attn_blocks"),
    ],
)
def test_layers_before_a_late_class_token_pool_their_patches(name, options, stage):
    # 'cls' read patch token 0 of blocks.N: the class token joins at `stage`
    bb = _tiny(name, **options)
    assert bb.identity()["class_token_stage"] == stage  # old 'cls' stores are not reused
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    seen = {}

    def hook(_m, _i, out) -> None:  # must return None: a value would replace the output
        seen.setdefault("out", out.clone())

    handle = bb.model.blocks[1].register_forward_hook(hook)
    try:
        out, poolings = _features(bb, ["blocks.1", "norm"], x)
    finally:
        handle.remove()
    assert poolings == {"blocks.1": "mean", "norm": "cls"}
    assert seen["out"].shape[1] == 4  # patches only
    torch.testing.assert_close(out["blocks.1"], seen["out"].mean(1))
    with pytest.raises(ConfigError, match=r"before the class token.*'blocks.1:mean'"):
        bb.features(["blocks.1:cls"])


def test_levit_processor_resizes_the_short_side_by_256_over_224():
    tr = pytest.importorskip("transformers")
    from featpipe.backbones.hf_models import preprocessing_of

    yy, xx = np.mgrid[0:45, 0:70]
    rgb = np.stack([np.sin(xx / 9) + np.cos(yy / 7), np.sin(yy / 11), np.cos((xx + yy) / 13)], -1)
    rgb = (rgb - rgb.min()) / (rgb.max() - rgb.min())
    image = Image.fromarray((rgb * 255).astype(np.uint8))
    # facebook/levit-*'s processor at 32: the short side to int(256 / 224 * 32) = 36, crop 32
    processor = tr.LevitImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    pre = preprocessing_of(processor)
    assert (pre.resize, pre.crop) == (36, 32)  # resize was 32: 0.49 apart
    theirs = processor(images=image, return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(pre.transform()(image), theirs, atol=1e-4, rtol=0)
