"""Backbones: registry, spec strings, layers and preprocessing."""

from featpipe.backbones import (  # noqa: F401  (register the families)
    efficientnet_lite,
    hf_models,
    open_clip_models,
    timm_models,
    torchvision_models,
)
from featpipe.backbones.base import Backbone, FeatureModel, state_dict_sha256
from featpipe.backbones.layers import LOGITS, POOLED, POOLINGS, LayerSpec, pool
from featpipe.backbones.preprocessing import Preprocessing
from featpipe.backbones.registry import (
    BackboneSpec,
    get_backbone,
    list_backbones,
    list_families,
    register_backbone,
    register_family,
    unregister_backbone,
)

__all__ = [
    "LOGITS",
    "POOLED",
    "POOLINGS",
    "Backbone",
    "BackboneSpec",
    "FeatureModel",
    "LayerSpec",
    "Preprocessing",
    "get_backbone",
    "list_backbones",
    "list_families",
    "pool",
    "register_backbone",
    "register_family",
    "state_dict_sha256",
    "unregister_backbone",
]
