"""Trust review of backbones (10): patch embeddings of later branches and stages (CrossViT,
CoaT), layers whose rows are not the images (TNT's pixel tokens), and local state-dict files."""

from __future__ import annotations

import pytest
import torch
from test_trust_backbones_4 import _features

from featpipe.backbones.timm_models import create, make_backbone
from featpipe.errors import ConfigError


def _tiny(name: str, size: int, **kwargs):
    torch.manual_seed(0)
    model = create(name, pretrained_cfg_overlay={"input_size": (3, size, size)}, **kwargs)
    return make_backbone(f"timm:{name}@none", model)


@pytest.mark.parametrize(
    "name, size, options, patches, joined",
    [
        # CoaT joins a class token to each stage's patch embedding: 'cls' read patch 0 of
        # patch_embed2..4 (only patch_embed1 came before the longest tokens)
        ("coat_lite_tiny", 32, dict(img_size=32, embed_dims=(16,) * 4, serial_depths=(1,) * 4,
                                    num_heads=8, mlp_ratios=(1,) * 4),
         ("patch_embed2", "patch_embed3.norm", "patch_embed4"), "serial_blocks2.0"),
        # CrossViT's second branch embeds its patches after the first branch's tokens
        ("crossvit_tiny_240", 48, dict(img_size=48, img_scale=(1.0, 32 / 48), patch_size=(12, 16),
                                       embed_dim=(8, 16), depth=((1, 1, 0),), num_heads=(2, 2),
                                       mlp_ratio=(1, 1, 1)),
         ("patch_embed.1",), "norm.1"),
    ],
)  # fmt: skip
def test_later_patch_embeddings_are_not_read_as_the_class_token(
    name, size, options, patches, joined
):
    bb = _tiny(name, size, **options)
    # keys kept; CrossViT's pooled joins both branches' heads (c9a8385), which its key records
    joins = {"pooled_inputs", "pooled_combine"} if name.startswith("crossvit") else set()
    assert set(bb.identity()) == {"spec", "weights_sha256", "preprocessing"} | joins
    for layer in patches:
        for request in (layer, f"{layer}:cls"):
            with pytest.raises(ConfigError, match=rf"before the class token.*'{layer}:mean'"):
                bb.features([request])
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    out, poolings = _features(bb, [f"{patches[0]}:mean", joined], x)
    assert poolings[joined] == "cls"  # the class token has joined: as before
    assert out[f"{patches[0]}:mean"].shape[0] == 2


def test_a_layer_whose_rows_are_not_the_images_is_refused():
    # TNT's blocks return (pixel tokens, patch tokens): the pixel tokens have B × patches rows,
    # and blocks.0 gave 8 rows of features for 2 images
    bb = _tiny("tnt_s_patch16_224", 32, img_size=32, depth=1, embed_dim=16, inner_dim=8,
               num_heads_outer=2, num_heads_inner=2)  # fmt: skip
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for layer in ("blocks.0", "pixel_embed:mean", "blocks.0.mlp_in:none"):
        with pytest.raises(ConfigError, match=r"shape \(8, .* for a batch of 2 .*featpipe layers"):
            _features(bb, [layer], x)
    listed = dict(bb.describe_layers())
    assert "blocks.0" not in listed and "pixel_embed" not in listed
    out, _ = _features(bb, ["norm", "pooled"], x)
    assert out["norm"].shape == (2, 16) and out["pooled"].shape == (2, 16)


def test_a_state_dict_with_a_classifier_for_other_classes_loads_with_that_classifier(tmp_path):
    # a network fine-tuned for 10 classes was refused ('fc.weight (10, 512) != (1000, 512)',
    # 'check ... the same number of classes'), with no way to give featpipe that number
    from torchvision import models

    from featpipe.backbones import get_backbone

    torch.manual_seed(1)
    tuned = models.resnet18(num_classes=10)
    torch.save(tuned.state_dict(), tmp_path / "tuned.pth")
    bb = get_backbone(f"torchvision:resnet18@{tmp_path / 'tuned.pth'}", image_size=32)
    for key, value in tuned.state_dict().items():
        assert torch.equal(bb.model.state_dict()[key], value), key
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out, _ = _features(bb, ["logits", "pooled"], x)
    tuned.eval()
    with torch.inference_mode():
        torch.testing.assert_close(out["logits"], tuned(x))
    assert bb.classifier == "fc" and out["pooled"].shape == (2, 512)
    # a file of another architecture is still refused
    torch.save(models.resnet34(num_classes=10).state_dict(), tmp_path / "other.pth")
    with pytest.raises(ConfigError, match=r"unexpected keys.*same architecture"):
        get_backbone(f"torchvision:resnet18@{tmp_path / 'other.pth'}")


def test_a_wrapped_state_dict_or_a_checkpoint_is_refused_naming_the_fix(tmp_path):
    from featpipe.backbones.weights import load_strict, read_state_dict

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    state = net.state_dict()
    # saved from DistributedDataParallel: said 'check that the file was saved from the same
    # architecture'
    with pytest.raises(ConfigError, match=r"starts with 'module\.'.*removeprefix\('module\.'\)"):
        load_strict(net, {f"module.{k}": v for k, v in state.items()}, source="x.pth")
    torch.save({"epoch": 3, "state_dict": state}, tmp_path / "ckpt.pth")
    with pytest.raises(ConfigError, match=r"entry 'state_dict' is a state dict.*\['state_dict'\]"):
        read_state_dict(tmp_path / "ckpt.pth")
    with pytest.raises(ConfigError, match="same architecture"):  # no common prefix: as before
        load_strict(net, {"0.weight": state["0.weight"]}, source="x.pth")


def test_the_download_command_for_a_missing_revision_names_the_revision(tmp_path, monkeypatch):
    # 'hf download REPO' fetches main: the cache still lacked v9 and the run failed again
    pytest.importorskip("transformers")
    from featpipe.backbones import get_backbone
    from featpipe.backbones.weights import WeightsUnavailableError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(WeightsUnavailableError) as err:
        get_backbone("hf:org/model@v9")
    message = str(err.value)
    assert "hf:org/model@v9 are not in" in message
    assert "`hf download org/model --revision v9`" in message
    with pytest.raises(WeightsUnavailableError, match=r"`hf download org/model` \("):
        get_backbone("hf:org/model")


def test_an_open_clip_file_that_is_no_checkpoint_is_refused_in_one_line(tmp_path):
    # a broken .safetensors file and a pickled list ended in tracebacks (SafetensorError,
    # AttributeError); a state dict of another model in a message of every missing key
    open_clip = pytest.importorskip("open_clip")
    import json

    from featpipe.backbones import get_backbone

    config = {
        "embed_dim": 8,
        "vision_cfg": {"image_size": 16, "layers": 1, "width": 16, "head_width": 8,
                       "patch_size": 8},
        "text_cfg": {"context_length": 4, "vocab_size": 10, "width": 8, "heads": 1, "layers": 1},
    }  # fmt: skip
    (tmp_path / "featpipe-bb10.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "featpipe-bb10.json")
    (tmp_path / "broken.safetensors").write_bytes(b"garbage")
    torch.save([1, 2], tmp_path / "list.pt")
    torch.save({f"w{i}": torch.zeros(1) for i in range(200)}, tmp_path / "other.pt")
    for name in ("broken.safetensors", "list.pt", "other.pt"):
        with pytest.raises(ConfigError, match="open_clip checkpoint") as err:
            get_backbone(f"open_clip:featpipe-bb10@{tmp_path / name}")
        assert "\n" not in str(err.value) and len(str(err.value)) < 800, name


def test_featpipe_layers_prints_a_squash_and_a_floored_crop_as_such(monkeypatch, capsys):
    # a squashing model's preprocessing printed as 'resize 36, centre crop 32', which reads
    # as a short-side resize keeping the aspect ratio
    import argparse
    from dataclasses import replace

    import featpipe.cli.backbones as cli
    from featpipe.backbones import Preprocessing, get_backbone
    from featpipe.cli.backbones import run_layers

    bb = get_backbone("torchvision:resnet18@none", image_size=32)
    for options, expected in [
        (dict(crop_mode="squash"), "preprocessing: squash to 36×36, centre crop 32, bilinear"),
        (dict(crop_offset="floor"), "0.225), crop corner floored\n"),
        ({}, "preprocessing: resize 36, centre crop 32, bilinear"),
    ]:
        pre = Preprocessing(resize=36, crop=32, **options)
        monkeypatch.setattr(cli, "get_backbone", lambda spec, image_size=None, pre=pre: replace(
            bb, preprocessing=pre))  # fmt: skip
        run_layers(argparse.Namespace(spec="x", image_size=None, filter="layer4"))
        assert expected in capsys.readouterr().out


def test_a_checkpoint_with_other_objects_is_refused_in_one_line_naming_the_fix(tmp_path):
    # torch.load(weights_only=True)'s error spans paragraphs with terminal colours and
    # advises weights_only=False, which featpipe cannot be told
    import argparse

    from featpipe.backbones.weights import read_state_dict

    net = torch.nn.Linear(2, 2)
    torch.save(
        {"state_dict": net.state_dict(), "args": argparse.Namespace(lr=1)}, tmp_path / "c.pt"
    )
    with pytest.raises(ConfigError) as err:
        read_state_dict(tmp_path / "c.pt")
    message = str(err.value)
    assert "\n" not in message and "\x1b" not in message and len(message) < 600
    assert "unsupported global argparse.Namespace" in message
    assert "torch.load(path, weights_only=False)" in message


def test_an_image_processor_that_does_not_resize_is_refused():
    # do_resize=False feeds each image at its own size (a centre crop of the original):
    # featpipe resized the short side first, other pixels
    tr = pytest.importorskip("transformers")
    from featpipe.backbones.hf_models import preprocessing_of

    size = {"height": 32, "width": 32}
    processor = tr.ViTImageProcessor(size=size, crop_size=size, do_resize=False)
    with pytest.raises(ConfigError, match=r"do_resize=False .*featpipe resizes every image"):
        preprocessing_of(processor)
    preprocessing_of(tr.ViTImageProcessor(size=size))  # resizing processors as before


def test_a_folder_given_as_weights_file_is_named_a_folder(tmp_path):
    # 'torchvision:resnet18@/tmp' said the folder 'does not exist'
    from featpipe.backbones.weights import read_state_dict

    with pytest.raises(ConfigError, match="is a folder, not a file"):
        read_state_dict(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        read_state_dict(tmp_path / "nothere.pth")
