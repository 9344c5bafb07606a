"""``torchvision:<model>[@weights]``: torchvision's classification models and Weights enums.

weights: omitted or ``DEFAULT`` (the enum's default), an enum member name (``IMAGENET1K_V2``),
``none`` (random init, seed 0), or a path to a local state-dict file. Preprocessing always
comes from the enum's metadata (the DEFAULT member for ``none`` and local files).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from urllib.parse import urlparse

import torch
from torchvision import models

from featpipe.backbones.base import Backbone
from featpipe.backbones.preprocessing import Preprocessing
from featpipe.backbones.registry import BackboneSpec, register_family
from featpipe.backbones.weights import (
    PATH_RULE,
    build_from_file,
    fetch_error,
    is_weights_path,
    seeded,
    stages_of,
)
from featpipe.errors import unknown_name

IMAGENET_DEFAULT = Preprocessing(resize=256, crop=224)


def model_names() -> list[str]:
    return models.list_models(module=models)


def _weights_enum(name: str) -> type[Enum] | None:
    try:
        return models.get_model_weights(name)
    except ValueError:  # a model without published weights
        return None


def preprocessing_of(weights: Enum | None) -> Preprocessing:
    """The preprocessing a Weights enum member declares (``weights.transforms()``)."""
    if weights is None:
        return IMAGENET_DEFAULT
    t = weights.transforms()
    return Preprocessing(
        resize=int(t.resize_size[0]),
        crop=int(t.crop_size[0]),
        interpolation=t.interpolation.value,
        mean=tuple(t.mean),
        std=tuple(t.std),
        antialias=bool(t.antialias),
    )


def _resolve_member(enum: type[Enum] | None, spec: BackboneSpec) -> Enum:
    """The enum member a weights name stands for (``DEFAULT`` resolved to the real member)."""
    valid = [*(enum.__members__ if enum else []), "none", "<path to state dict>"]
    if enum is None or spec.weights not in enum.__members__:
        raise unknown_name(
            f"weights for torchvision:{spec.name}",
            spec.weights,
            valid,
            hint="Use an enum name, 'none' for random init, or a path to a state-dict file. "
            + PATH_RULE,
        )
    return enum[spec.weights]


def _download(name: str, member: Enum) -> torch.nn.Module:
    try:
        return models.get_model(name, weights=member)
    except OSError as exc:  # URLError, timeouts, DNS failures
        filename = Path(urlparse(member.url).path).name
        checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
        raise fetch_error(
            f"torchvision weights {type(member).__name__}.{member.name} from {member.url}",
            exc,
            f"Place {filename} in $TORCH_HOME/hub/checkpoints/ (here: {checkpoints}/), or give a "
            f"local state-dict file as 'torchvision:{name}@/path/to/{filename}'.",
        ) from exc


def build(spec: BackboneSpec) -> Backbone:
    """Build ``torchvision:<name>[@weights]`` in eval mode with its preprocessing."""
    enum = _weights_enum(spec.name)
    weights = spec.weights or "DEFAULT"
    meta = enum.DEFAULT if enum is not None else None
    sha = ""  # empty: Backbone hashes the loaded state dict
    if weights == "none":
        model = seeded(lambda: models.get_model(spec.name, weights=None))
    elif is_weights_path(weights):
        model, sha, weights = build_from_file(
            lambda **kw: models.get_model(spec.name, weights=None, **kw), weights
        )
    else:
        meta = _resolve_member(enum, BackboneSpec(spec.family, spec.name, weights))
        model = _download(spec.name, meta)
        weights = meta.name
    backbone = Backbone(
        spec=str(BackboneSpec("torchvision", spec.name, weights)),
        model=model,
        preprocessing=preprocessing_of(meta),
        weights_sha256=sha,
        nhwc_layers=_nhwc_layers(model),
        channels_last_layers=_channels_last_layers(model),
        # a torchvision ViT's tokens begin with its one class token ('avg' leaves it out)
        patch_start=1 if isinstance(model, models.VisionTransformer) else None,
    )
    backbone.stages = stages_of(model, expand=_containers(model), exclude=backbone.classifier)
    return backbone


def _nhwc_layers(model: torch.nn.Module) -> tuple[str, ...]:
    """Swin's stages, their blocks and its final norm give B×H×W×C maps (the patch
    embedding's convolution, ``features.0.0``, gives B×C×H×W)."""
    if not isinstance(model, models.SwinTransformer):
        return ()
    names = ["features", "norm"]
    for i, stage in enumerate(model.features):
        names.append(f"features.{i}")
        names += [
            f"features.{i}.{j}"
            for j, block in stage.named_children()
            if not isinstance(block, torch.nn.Conv2d)
        ]
    return tuple(names)


def _channels_last_layers(model: torch.nn.Module) -> tuple[str, ...]:
    """The modules whose 4-D outputs are channels last and that ``_nhwc_layers`` leaves
    unturned: inside Swin's stages, the blocks' norms, attention and MLPs and the patch
    merging's parts (B×H×W×C; v2's position-bias MLP gives 1×H×W×heads); inside MaxViT's
    attention layers, all but the last (B×windows×tokens×C). Only ``none`` may tap them."""
    modules = dict(model.named_modules())
    if isinstance(model, models.SwinTransformer):
        nhwc = set(_nhwc_layers(model))
        return tuple(
            n
            for n, m in modules.items()
            if n.startswith("features.") and n not in nhwc and not isinstance(m, torch.nn.Conv2d)
        )
    if isinstance(model, models.MaxVit):
        tops = [n for n, m in modules.items() if type(m).__name__ == "PartitionAttentionLayer"]
        return tuple(
            n
            for top in tops
            for n in modules
            if n.startswith(f"{top}.") and not n.startswith(f"{top}.departition_op")
        )
    return ()


def _containers(model: torch.nn.Module) -> list[str]:
    # VGG, MobileNet, EfficientNet, ConvNeXt, DenseNet... keep their stages in ``features``;
    # vision transformers their blocks in ``encoder.layers``.
    modules = dict(model.named_modules())
    return [
        n for n in ("features", "encoder.layers") if isinstance(modules.get(n), torch.nn.Sequential)
    ]


register_family("torchvision", build, model_names)
