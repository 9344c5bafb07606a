"""Trust review of backbones (3): mean pooling as the libraries pool, image processors that
featpipe cannot follow, weights paths told apart from tags, and .safetensors state dicts."""

from __future__ import annotations

import json
import pickle
import re

import numpy as np
import pytest
import torch
from PIL import Image

from featpipe.backbones import get_backbone
from featpipe.backbones.timm_models import create, make_backbone
from featpipe.backbones.weights import file_sha256, is_weights_path
from featpipe.errors import ConfigError, UnknownNameError


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


def test_open_clip_timm_tower_without_a_class_token_pools_its_patch_tokens(tmp_path):
    # open_clip's SigLIP models hold a timm ViT without a class token: its first token is a
    # patch (or register) token, which 'cls' read by default.
    open_clip = pytest.importorskip("open_clip")
    name = "featpipe-tiny-timm-reg1"
    vision = {"image_size": 256, "timm_model_name": "vit_pwee_patch16_reg1_gap_256"}
    text = {"context_length": 8, "vocab_size": 100, "width": 16, "heads": 2, "layers": 1}
    config = {"embed_dim": 16, "vision_cfg": {**vision, "timm_pool": ""}, "text_cfg": text}
    (tmp_path / f"{name}.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / f"{name}.json")
    bb = get_backbone(f"open_clip:{name}@none")
    assert (bb.identity()["token_pooling"], bb.identity()["prefix_tokens"]) == ("mean", 1)
    trunk = bb.model.visual.trunk
    x = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    fm = bb.features(["visual.trunk.norm"])
    try:
        with torch.inference_mode():
            got = fm(x)["visual.trunk.norm"]
            want = trunk.forward_features(x)[:, 1:].mean(1)  # timm's average pooling
    finally:
        fm.remove()
    assert fm.poolings["visual.trunk.norm"] == "mean"
    torch.testing.assert_close(got, want)


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


def _smooth_image(height: int = 45, width: int = 70) -> Image.Image:
    """A smooth non-square RGB image: resize kernels barely differ on it."""
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack([np.sin(xx / 9) + np.cos(yy / 7), np.sin(yy / 11), np.cos((xx + yy) / 13)], -1)
    rgb = (rgb - rgb.min()) / (rgb.max() - rgb.min())
    return Image.fromarray((rgb * 255).astype(np.uint8))


def test_poolformer_processor_resizes_by_its_crop_pct_before_the_crop():
    tr = pytest.importorskip("transformers")
    from featpipe.backbones.hf_models import preprocessing_of

    # sail/poolformer_s12's processor, at 32: the short side to int(32 / 0.9) = 35, crop 32
    processor = tr.PoolFormerImageProcessor(
        size={"shortest_edge": 32}, crop_pct=0.9, crop_size={"height": 32, "width": 32}
    )
    pre = preprocessing_of(processor)
    assert (pre.resize, pre.crop, pre.crop_mode) == (35, 32, "center")  # resize was 32
    image = _smooth_image()
    theirs = processor(images=image, return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(pre.transform()(image), theirs, atol=0.03, rtol=0)


@pytest.mark.parametrize(
    "kind, options, step",
    [
        ("ViTImageProcessor", {"rescale_factor": 1 / 127.5}, "rescale_factor=0.00784"),
        ("ViTImageProcessor", {"do_rescale": False}, "do_rescale=False"),
        ("EfficientNetImageProcessor", {}, "include_top=True"),  # google/efficientnet-*
        ("MobileViTImageProcessor", {}, "do_flip_channel_order=True"),  # apple/mobilevit-*
    ],
)
def test_processor_pixel_steps_featpipe_does_not_take_are_refused(kind, options, step):
    # featpipe fed [0, 1] pixels normalised once, in RGB: 1.0 to 264 apart from these
    tr = pytest.importorskip("transformers")
    from featpipe.backbones.hf_models import preprocessing_of

    size = {"height": 32, "width": 32}
    processor = getattr(tr, kind)(size=size, crop_size=size, **options)
    with pytest.raises(ConfigError, match=re.escape(step)):
        preprocessing_of(processor)


# weights paths and tags ---------------------------------------------------------------------------


def test_a_file_named_like_a_weights_tag_leaves_the_tag_a_tag(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("imagenet", "DEFAULT"):
        (tmp_path / name).write_bytes(b"not weights")
        assert not is_weights_path(name)  # a name, whatever the current folder holds
        assert is_weights_path(f"./{name}")
    assert is_weights_path("w.safetensors") and is_weights_path("/abs/w")
    # read as an unknown weights name, with the rule and the way to name the file
    with pytest.raises(UnknownNameError, match=r"weights for timm:resnet18 'imagenet'.*\./<name>"):
        get_backbone("timm:resnet18@imagenet")


# .safetensors state dicts ----------------------------------------------------------------------


@pytest.fixture
def torch_load_without_safetensors(monkeypatch):
    """torch.load as the older torch releases the project supports (torch>=2.3) have it: it
    reads pickles only (torch 2.14, installed here, also reads .safetensors files)."""
    load = torch.load

    def old_load(f, *args, **kwargs):
        if str(f).endswith(".safetensors"):
            raise pickle.UnpicklingError("invalid load key, '\\x08'.")
        return load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", old_load)


@pytest.mark.parametrize("spec", ["torchvision:squeezenet1_1", "timm:test_vit"])
def test_safetensors_state_dicts_load_for_torchvision_and_timm(
    spec, tmp_path, torch_load_without_safetensors
):
    from safetensors.torch import save_file

    model = get_backbone(f"{spec}@none").model
    state = {k: v + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    bb = get_backbone(f"{spec}@{path}")
    assert bb.spec == f"{spec}@{path}"
    assert bb.weights_sha256 == file_sha256(path)
    loaded = bb.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_a_broken_safetensors_file_is_refused_clearly(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match=r"Could not read .* with safetensors.*save_file"):
        get_backbone(f"timm:test_vit@{path}")
