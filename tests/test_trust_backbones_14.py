"""'<layer>:avg' of B×T×C tokens: the patch-token average of timm's global_pool='avg'."""

from __future__ import annotations

import json

import pytest
import timm
import torch

from featpipe.backbones.timm_models import make_backbone
from featpipe.errors import ConfigError


def _vit(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2, **kw
    ).eval()
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, 32, 32)}  # its crop
    return model


def _features(model: torch.nn.Module, layers: list[str]) -> dict[str, torch.Tensor]:
    bb = make_backbone("timm:vit_tiny_patch16_224@none", model)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        return bb.features(layers)(x)


@pytest.mark.parametrize("reg_tokens", [0, 4])
def test_avg_of_tokens_is_the_pooled_features_of_timms_global_average_pool(reg_tokens):
    model = _vit(global_pool="avg", fc_norm=False, reg_tokens=reg_tokens)
    out = _features(model, ["pooled", "norm:avg", "norm:mean"])
    assert torch.allclose(out["norm:avg"], out["pooled"], atol=1e-6)
    # ':mean' is unchanged: every token, class and register tokens included
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        tokens = model.forward_features(x)
    assert torch.allclose(out["norm:mean"], tokens.mean(dim=1), atol=1e-6)
    assert not torch.allclose(out["norm:mean"], out["pooled"], atol=1e-4)
    # and so is its store key: the identity of a class-token model gains nothing
    bb = make_backbone("timm:vit_tiny_patch16_224@none", model)
    assert set(bb.identity()) == {"spec", "weights_sha256", "preprocessing"}


def test_avg_of_tokens_in_a_vit_without_a_class_token_is_its_mean():
    model = _vit(global_pool="avg", fc_norm=False, class_token=False, reg_tokens=4)
    out = _features(model, ["pooled", "norm:avg", "norm:mean"])
    assert torch.equal(out["norm:avg"], out["norm:mean"])
    assert torch.allclose(out["norm:avg"], out["pooled"], atol=1e-6)


def test_avg_of_tokens_before_the_class_token_joins_averages_every_patch():
    out = _features(_vit(), ["patch_embed:avg", "patch_embed:mean"])
    assert torch.equal(out["patch_embed:avg"], out["patch_embed:mean"])


def test_avg_of_tokens_is_refused_in_one_line_where_the_prefix_is_not_known():
    model = _vit()
    del model.num_prefix_tokens  # as a class-token model that does not say it
    with pytest.raises(ConfigError, match=r"does not say how many class or register") as e:
        _features(model, ["norm:avg"])
    assert "\n" not in str(e.value) and "'norm:cls' or 'norm:mean'" in str(e.value)


def test_avg_of_tokens_of_an_open_clip_vit_is_its_avg_pool(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    from featpipe.backbones import get_backbone

    vision = dict(image_size=32, layers=2, width=32, head_width=16, patch_size=8, pool_type="avg")
    text = dict(context_length=8, vocab_size=100, width=16, heads=2, layers=1)
    config = tmp_path / "featpipe-tiny-avg.json"
    config.write_text(json.dumps({"embed_dim": 16, "vision_cfg": vision, "text_cfg": text}))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model = open_clip.create_model("featpipe-tiny-avg", load_weights=False).eval()
    torch.save(model.state_dict(), tmp_path / "w.bin")
    bb = get_backbone(f"open_clip:featpipe-tiny-avg@{tmp_path / 'w.bin'}")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        out = bb.features(["visual.ln_post:avg"])(x)["visual.ln_post:avg"]
        assert torch.allclose(out @ model.visual.proj, model.encode_image(x), atol=1e-6)


def test_avg_of_tokens_of_an_hf_model_leaves_out_its_class_and_register_tokens(tmp_path):
    transformers = pytest.importorskip("transformers")
    from featpipe.backbones import get_backbone

    vit = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    config = transformers.Dinov2WithRegistersConfig(
        **vit, image_size=32, patch_size=8, num_register_tokens=4
    )
    torch.manual_seed(0)
    model = transformers.Dinov2WithRegistersModel(config).eval()
    model.save_pretrained(tmp_path)
    crop = {"height": 32, "width": 32}
    processor = transformers.BitImageProcessor(size={"shortest_edge": 32}, crop_size=crop)
    processor.save_pretrained(tmp_path)
    bb = get_backbone(f"hf:{tmp_path}")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        out = bb.features(["last_hidden_state:avg"])(x)["last_hidden_state:avg"]
        tokens = model(pixel_values=x).last_hidden_state
    assert bb.patch_start == 5  # the class token and 4 registers
    assert torch.allclose(out, tokens[:, 5:].mean(dim=1), atol=1e-6)
