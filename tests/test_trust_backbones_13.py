"""Trust sweep of the backbones, round 13: local ``hf:`` folders load the weights they claim
(transformers fills what a weights file lacks at random, unseeded)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

from featpipe.backbones import get_backbone  # noqa: E402
from featpipe.errors import ConfigError  # noqa: E402

VIT = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2)


def _vit_folder(folder: Path, pooler: bool) -> transformers.ViTModel:
    """A tiny random ViT saved with its image processor (with or without its pooler)."""
    torch.manual_seed(0)
    model = transformers.ViTModel(
        transformers.ViTConfig(**VIT, intermediate_size=64), add_pooling_layer=pooler
    ).eval()
    model.save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return model


def test_a_vit_saved_without_its_pooler_gives_its_class_token_as_pooled(tmp_path):
    # DINO and MAE ViTs on the hub keep no pooler: AutoModel made one at random at each load
    model = _vit_folder(tmp_path, pooler=False)
    first, second = (get_backbone(f"hf:{tmp_path}") for _ in range(2))
    assert first.weights_sha256 == second.weights_sha256  # one store key for one folder
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        pooled = first.features(["pooled"])(x)["pooled"]
        expected = model(pixel_values=x).last_hidden_state[:, 0]
    torch.testing.assert_close(pooled, expected)


@pytest.mark.parametrize("damage", ["missing", "other shape"])
def test_a_weights_file_that_does_not_fit_its_config_is_refused_in_one_line(tmp_path, damage):
    _vit_folder(tmp_path, pooler=True)
    file = tmp_path / "model.safetensors"
    tensors = safetensors_torch.load_file(file)
    key = "encoder.layer.0.attention.attention.query.weight"
    if damage == "missing":
        del tensors[key]
    else:
        tensors[key] = torch.zeros(32, 16)
    safetensors_torch.save_file(tensors, file, metadata={"format": "pt"})
    with pytest.raises(ConfigError) as err:
        get_backbone(f"hf:{tmp_path}")
    text = str(err.value)
    assert "\n" not in text and f"({damage})" in text and "at random" in text
    assert "save_pretrained" in text


def test_an_open_clip_checkpoint_path_that_is_a_folder_is_called_a_folder(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    config = {
        "embed_dim": 16,
        "vision_cfg": {
            "image_size": 32,
            "layers": 1,
            "width": 32,
            "head_width": 16,
            "patch_size": 8,
        },
        "text_cfg": {"context_length": 8, "vocab_size": 100, "width": 16, "heads": 2, "layers": 1},
    }
    (tmp_path / "featpipe-tiny-vit-13.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "featpipe-tiny-vit-13.json")
    folder = tmp_path / "weights"
    folder.mkdir()
    with pytest.raises(ConfigError, match="is a folder, not a file"):
        get_backbone(f"open_clip:featpipe-tiny-vit-13@{folder}")


def test_an_image_size_the_model_does_not_run_at_is_refused_before_extraction():
    # the patch size must divide it: the first batch of an extraction gave a traceback
    with pytest.raises(ConfigError) as err:
        get_backbone("timm:vit_tiny_patch16_224", image_size=40)
    text = str(err.value)
    assert "\n" not in text and "does not run on 40×40 images" in text
    assert "divisible by patch size (16)" in text
    backbone = get_backbone("timm:vit_tiny_patch16_224", image_size=48)
    assert backbone.preprocessing.crop == 48 and not backbone.model.training


def test_a_clip_vision_tower_saved_with_its_projection_gives_the_image_embedding(tmp_path):
    # AutoModel built CLIPVisionModel and dropped visual_projection: 'pooled' was 32-d, not 12
    torch.manual_seed(0)
    config = transformers.CLIPVisionConfig(**VIT, intermediate_size=64, projection_dim=12)
    model = transformers.CLIPVisionModelWithProjection(config).eval()
    model.save_pretrained(tmp_path)
    transformers.CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(tmp_path)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        pooled = get_backbone(f"hf:{tmp_path}").features(["pooled"])(x)["pooled"]
        expected = model(pixel_values=x).image_embeds
    torch.testing.assert_close(pooled, expected)
