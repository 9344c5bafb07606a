"""Trust review of backbones: features that must be what was asked for, and user mistakes
that must be refused early with a clear error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from featpipe.backbones import LayerSpec, get_backbone
from featpipe.errors import ConfigError
from featpipe.extract.inference import Inference


@pytest.fixture(scope="module")
def resnet18():
    return get_backbone("torchvision:resnet18@none")


def _hooked_output(backbone, module: str, x: torch.Tensor) -> torch.Tensor:
    """A module's output as it left the module (copied at once), flattened."""
    seen = {}

    def hook(_m, _i, out) -> None:  # must return None: a value would replace the output
        seen.setdefault("out", out.detach().clone())

    handle = dict(backbone.model.named_modules())[module].register_forward_hook(hook)
    try:
        with torch.inference_mode():
            backbone.model(x)
    finally:
        handle.remove()
    return seen["out"].flatten(1)


def test_unpooled_features_are_not_changed_by_later_in_place_ops(resnet18):
    # ResNet's block applies an in-place ReLU to bn1's output and adds the shortcut to bn2's
    # in place: features read without pooling must be the values the module returned.
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    fm = resnet18.features(["layer1.0.bn1:none", "layer1.0.bn2:none"])
    try:
        with torch.inference_mode():
            out = fm(x)
    finally:
        fm.remove()
    for module in ("layer1.0.bn1", "layer1.0.bn2"):
        expected = _hooked_output(resnet18, module, x)
        assert (expected < 0).any()  # a batch-norm output, before the ReLU
        torch.testing.assert_close(out[f"{module}:none"], expected)


def test_unpooled_1x1_map_equals_its_average_through_extraction(resnet18):
    # At 32 px layer4 is 1×1, so 'none' and 'avg' must give the same vector; channels-last
    # makes flatten a view there, which the in-place shortcut add then overwrote.
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with Inference.of_layers(resnet18, ["layer4.1.bn2:none", "layer4.1.bn2:avg"], "cpu") as inf:
        out = inf.arrays(x)
    np.testing.assert_allclose(out["layer4.1.bn2:none"], out["layer4.1.bn2:avg"], atol=1e-5)


@pytest.mark.parametrize(
    "spec, size, expected",
    [
        ("timm:vit_base_patch16_gap_224@none", 32, "mean"),  # average pooling, no class token
        ("timm:mixer_s16_224@none", 224, "mean"),  # MLP-Mixer: tokens, no class token
        ("timm:vit_tiny_patch16_224@none", 32, "cls"),
    ],
)
def test_timm_token_models_without_class_token_default_to_mean(spec, size, expected):
    bb = get_backbone(spec, image_size=size)
    assert bb.token_pooling == expected
    fm = bb.features(["blocks.0"])
    try:
        with torch.inference_mode():
            fm(torch.zeros(1, 3, size, size))
    finally:
        fm.remove()
    assert fm.poolings["blocks.0"] == expected


def test_token_pooling_default_is_part_of_the_identity():
    # Stores made when such a model defaulted to 'cls' must not be reused for 'mean'.
    gap = get_backbone("timm:vit_base_patch16_gap_224@none", image_size=32)
    assert gap.identity()["token_pooling"] == "mean"
    cls = get_backbone("timm:vit_tiny_patch16_224@none", image_size=32)
    assert "token_pooling" not in cls.identity()  # unchanged keys for class-token models


@pytest.mark.parametrize("text", ["layer3:grid:0", "layer3:grid:00"])
def test_grid_zero_is_refused_when_parsed(text):
    with pytest.raises(ConfigError, match="grid"):
        LayerSpec.parse(text)


@pytest.mark.parametrize(
    "spec, stage",
    [
        ("torchvision:swin_t@none", "features.7"),
        ("timm:swin_tiny_patch4_window7_224@none", "layers.3"),
    ],
)
def test_swin_stages_are_pooled_over_height_and_width(spec, stage):
    # Swin's stages give B×H×W×C maps: pooling them as B×C×H×W averaged over W and C.
    bb = get_backbone(spec, image_size=64)
    shapes = dict(bb.describe_layers())
    assert shapes[stage] == shapes["norm"] == (768, 2, 2)
    assert bb.identity()["nhwc_layers"]  # stores pooled the old way are not reused
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with Inference.of_layers(bb, [stage, f"{stage}:grid:2", "norm:avg", "pooled"], "cpu") as inf:
        out = inf.arrays(x)
    assert out[stage].shape == (2, 768) and out[f"{stage}:grid:2"].shape == (2, 768 * 4)
    # The classifier's input is the average of the final norm over height and width.
    np.testing.assert_allclose(out["norm:avg"], out["pooled"], rtol=1e-4, atol=1e-5)
    # grid:2 of a 2×2 map is the map itself, channel by channel.
    np.testing.assert_allclose(
        out[f"{stage}:grid:2"].reshape(2, 768, 4).mean(2), out[stage], rtol=1e-4, atol=1e-5
    )


def test_fixed_size_timm_model_refuses_another_image_size():
    # MLP-Mixer asserts its input size in the forward pass: refuse early, with the fix.
    with pytest.raises(ConfigError, match=r"accepts 224×224 inputs only; got image size 32"):
        get_backbone("timm:mixer_s16_224@none", image_size=32)
    assert get_backbone("timm:mixer_s16_224@none", image_size=224).preprocessing.crop == 224
    assert get_backbone("timm:vit_tiny_patch16_224@none", image_size=32).preprocessing.crop == 32


@pytest.mark.parametrize("resample, expected", [(0, "nearest"), (3, "bicubic"), (None, "bilinear")])
def test_hf_processor_resampling_is_recorded_as_given(resample, expected):
    from types import SimpleNamespace

    from featpipe.backbones.hf_models import preprocessing_of

    processor = SimpleNamespace(
        size={"height": 32}, resample=resample, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    assert preprocessing_of(processor).interpolation == expected  # NEAREST (0) was bilinear


def test_a_module_that_runs_twice_in_a_forward_pass_is_refused():
    # torchvision ResNet's block relu runs twice (after bn1, and after the shortcut add):
    # its features were the last call's, while `featpipe layers` showed the first call's.
    bb = get_backbone("torchvision:resnet18@none", 32)
    run = Inference.of_layers(bb, ["layer1.0.relu:avg"], torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"'layer1\.0\.relu' .* runs more than once.*'layer1\.0'"):
        run.arrays(torch.zeros(2, 3, 32, 32))
    once = Inference.of_layers(bb, ["layer1.0:avg", "layer1.0.bn2:avg"], torch.device("cpu"))
    assert once.arrays(torch.zeros(2, 3, 32, 32))["layer1.0:avg"].shape == (2, 64)
    listed = dict(bb.describe_layers())  # `featpipe layers` offers only what can be tapped
    assert "layer1.0.relu" not in listed and listed["layer1.0.bn2"] == (64, 8, 8)


def test_embedder_layer_with_spaces_is_read_like_extraction():
    from featpipe import Embedder

    images = [np.zeros((8, 8, 3), np.uint8)] * 2
    assert Embedder("toy", layer=" pooled ", device="cpu").fit().transform(images).shape[0] == 2
