"""Trust review of backbones (11): CoaT's stages in forward order (partial:N), attention
weights whose average is a constant, and TNT's projections before the class token."""

from __future__ import annotations

import pytest
import torch
from test_trust_backbones_4 import _features
from test_trust_backbones_10 import _tiny

from featpipe.errors import ConfigError
from featpipe.finetune.freezing import Mode, frozen_by

_COAT = dict(img_size=32, embed_dims=(16,) * 4, serial_depths=(2,) * 4, num_heads=8,
             mlp_ratios=(1,) * 4)  # fmt: skip


@pytest.mark.parametrize("name, parallel", [("coat_lite_tiny", 0), ("coat_tiny", 1)])
def test_coat_stages_follow_the_forward_pass(name, parallel):
    # CoaT registers every patch embedding, then every positional encoding, then the blocks:
    # partial:2 froze patch_embed1 and patch_embed2 (and all four class tokens), leaving the
    # first serial blocks, which run between them, to train
    options = dict(_COAT, parallel_depth=parallel) if parallel else _COAT
    bb = _tiny(name, 32, **options)
    first: dict[str, int] = {}

    def called(name: str) -> None:  # a pre-hook returning a value would replace the input
        first.setdefault(name, len(first))

    handles = [
        m.register_forward_pre_hook(lambda _m, _i, n=n: called(n))
        for n, m in bb.model.named_children()
    ]
    with torch.inference_mode():
        bb.model(torch.zeros(1, 3, 32, 32))
    for h in handles:
        h.remove()
    starts = [min(first[n] for n in stage if n in first) for stage in bb.stages]
    assert starts == sorted(starts), bb.stages
    assert bb.stages[:2] == [
        ("patch_embed1", "cls_token1"),
        ("serial_blocks1", "cpe1", "crpe1"),
    ]
    frozen = frozen_by(bb.model, Mode.parse("partial:2"), bb.stages, bb.classifier)
    assert set(frozen) == {"patch_embed1", "serial_blocks1", "cpe1", "crpe1", "cls_token1"}
    # every parameter but the head's is in exactly one stage
    staged = [n for stage in bb.stages for n in stage]
    assert len(staged) == len(set(staged))
    for p in dict(bb.model.named_parameters()):
        assert p.startswith("head.") or any(p == n or p.startswith(n + ".") for n in staged), p


def test_attention_weights_are_not_averaged_into_constant_features():
    # ConViT's attn_drop (identity at eval) gives softmax weights heads×T×T: its default
    # pooling, avg, gave 1/T for every image, and `featpipe layers` listed it as 'avg'
    bb = _tiny("convit_tiny", 32, img_size=32, embed_dim=16, depth=1, num_heads=2)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    layer = "blocks.0.attn.attn_drop"
    for request in (layer, f"{layer}:avg", f"{layer}:avgmax", f"{layer}:grid:1"):
        with pytest.raises(ConfigError, match=rf"attention weights .*1/4 .*'{layer}:max'"):
            _features(bb, [request], x)
    out, _ = _features(bb, [f"{layer}:max", "blocks.0.attn"], x)
    assert not torch.equal(out[f"{layer}:max"][0], out[f"{layer}:max"][1])
    listed = dict(bb.describe_layers())
    assert layer not in listed and "blocks.0.attn" in listed and "blocks.0.attn.proj" in listed


def test_tnt_norm1_proj_is_not_read_as_the_class_token_at_any_width():
    # pixel_embed.unfold's B×768×patches output counted as the longest tokens, so norm1_proj
    # (patches only) defaulted to 'cls' where its width differs from embed_dim's
    bb = _tiny("tnt_s_patch16_224", 32, img_size=32, depth=1, embed_dim=16, inner_dim=8,
               num_heads_outer=2, num_heads_inner=2)  # fmt: skip
    for request in ("norm1_proj", "norm1_proj:cls"):
        with pytest.raises(ConfigError, match=r"before the class token.*'norm1_proj:mean'"):
            bb.features([request])
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out, poolings = _features(bb, ["norm1_proj:mean", "norm"], x)
    assert poolings["norm"] == "cls" and out["norm1_proj:mean"].shape == (2, 128)


@pytest.mark.parametrize("classes", [1000, 10])
def test_a_state_dict_without_batch_norm_step_counters_loads(tmp_path, classes):
    # files converted or filtered often leave out num_batches_tracked (torch's strict load
    # allows it); featpipe refused them as '20 missing keys'
    from safetensors.torch import save_file

    from featpipe.backbones import get_backbone
    from featpipe.backbones.timm_models import create

    torch.manual_seed(1)
    model = create("resnet18", num_classes=classes).eval()
    state = {k: v for k, v in model.state_dict().items() if "num_batches_tracked" not in k}
    save_file(state, tmp_path / "r18.safetensors")
    bb = get_backbone(f"timm:resnet18@{tmp_path / 'r18.safetensors'}")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(bb.model(x), model(x))


def test_an_image_size_that_is_no_whole_number_is_refused_and_numpy_ints_keep_the_key():
    # 64.0 gave crop 64.0 (another store key than 64) and '64' a TypeError traceback
    import numpy as np

    from featpipe.backbones import get_backbone

    base = get_backbone("builtin:efficientnet_lite0@none")
    assert type(base.at_size(np.int64(64)).preprocessing.crop) is int  # JSON-able key
    for size in (64.0, "64"):
        with pytest.raises(ConfigError, match="whole number of pixels"):
            base.at_size(size)
