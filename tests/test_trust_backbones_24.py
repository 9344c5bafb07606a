"""timm models whose ``pooled`` was not ``forward_head(pre_logits=True)``: a MetaFormer's MLP
head (CAFormer, ConvFormer), a model built without a classifier (``num_classes=0``, timm's
default for image encoders such as NaFlexViT RADIO), and a 1x1 convolution as the classifier
(DLA, DPN, ResNetV2), which offered no ``pooled``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("timm")

from test_trust_backbones_22 import _images, _pooled, _pre_logits
from test_trust_backbones_23 import _backbone

from featpipe.backbones.base import IdentityHead
from featpipe.backbones.layers import POOLED


def _check_pre_logits(backbone, model, described: tuple[int, ...] = ()) -> torch.Tensor:
    """``pooled`` equals timm's pre-logits; ``describe_layers`` gives its shape as the module
    reads it (``described``; the pre-logits' shape if not given)."""
    x = _images(backbone.preprocessing.crop)
    expected = _pre_logits(model, x)
    assert torch.equal(_pooled(backbone, x), expected)
    shape = described or tuple(expected.shape[1:])
    assert (POOLED, shape) in backbone.describe_layers()
    return expected


@pytest.mark.parametrize("name", ["caformer_s18", "convformer_s18"])
def test_metaformer_mlp_head_pooled_is_timms_pre_logits(name):
    """timm names the MLP head's last Linear (head.fc.fc2), whose input is the head's hidden
    layer (2048 wide); the pre-logits are the MLP head's input (512)."""
    backbone, model = _backbone(name)
    assert _check_pre_logits(backbone, model).shape[1] == 512
    assert backbone.identity()["pooled_inputs"] == ["head.fc"]
    # fine-tuning still replaces the Linear timm names
    assert backbone.classifier == "head.fc.fc2"


@pytest.mark.parametrize(
    "name, shrink, head",
    [
        ("naflexvit_base_patch16_radio_v3", {"depth": 1}, "head"),  # num_classes=0 by default
        ("vit_tiny_patch16_224", {"depth": 1, "num_classes": 0}, "head"),
        ("levit_128s", {"depth": (1, 1, 1), "num_classes": 0}, "head"),  # named head.linear
        ("caformer_s18", {"num_classes": 0}, "head.fc"),  # named head.fc.fc2
    ],
)
def test_a_model_without_a_classifier_pools_the_input_of_its_identity_head(name, shrink, head):
    """With no Linear classifier, the last Linear was guessed: the last block's MLP output
    layer, so ``pooled`` was a block's hidden layer (4x the width of the pre-logits)."""
    backbone, model = _backbone(name, **shrink)
    _check_pre_logits(backbone, model)
    assert backbone.classifier == head
    # Where timm names one classifier, an IdentityHead of the pre-logits' width takes the
    # Identity's place, for fine-tuning to replace (test_trust_backbones_26); a distilled
    # LeViT's two heads stay Identities, which fine-tuning refuses.
    kind = nn.Identity if name == "levit_128s" else IdentityHead
    assert type(model.get_submodule(head)) is kind
    assert backbone.identity()["pooled_inputs"] == [head]  # new keys: pooled changed


@pytest.mark.parametrize(
    "name, classifier, width",
    [("dla34", "fc", 512), ("dpn68", "classifier", 832), ("resnetv2_18", "head.fc", 512)],
)
def test_a_1x1_conv_classifier_offers_pooled_under_the_old_keys(name, classifier, width):
    """The classifier timm names is a 1x1 convolution after the global pool: its input,
    flattened, is the pre-logits. No ``pooled`` was offered, so no other layer changes key."""
    backbone, model = _backbone(name)
    assert backbone.classifier == classifier
    _check_pre_logits(backbone, model, described=(width, 1, 1))  # the 1x1 map the conv reads
    assert set(backbone.identity()) == {"spec", "weights_sha256", "preprocessing"}
