"""A timm model without a head at its top (Gemma 4's ViT encoder) gets no classifier guessed
inside its last block: it is headless."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("timm")

from featpipe.backbones.timm_models import create, make_backbone
from featpipe.backbones.weights import seeded
from featpipe.errors import ConfigError

# 48: the soft-token pooler takes multiples of patch size (16) × pooling kernel (3).
TINY_GEMMA_ENC = {"depth": 3, "embed_dim": 32, "num_heads": 2, "head_dim": 16}
SIZE = 48


def _gemma_enc():
    model = seeded(lambda: create("gemma4_vit_167m_enc", **TINY_GEMMA_ENC, intermediate_size=64))
    return make_backbone("timm:gemma4_vit_167m_enc@none", model).at_size(SIZE), model


def test_no_classifier_is_guessed_inside_a_block():
    """Before: classifier 'blocks.2.mlp.down_proj.linear' (the last Linear), and stages
    [('patch_embed',)] since the stages leave the classifier's block out."""
    backbone, _ = _gemma_enc()
    assert backbone.classifier is None
    assert backbone.stages == [("patch_embed",), ("blocks.0",), ("blocks.1",), ("blocks.2",)]


def test_its_output_is_read_as_logits_and_no_pooled_is_offered():
    """``pooled`` read the hidden layer of the last block's MLP before; now the model's own
    output (its soft tokens, averaged) is ``logits``, and ``pooled`` is refused."""
    backbone, model = _gemma_enc()
    assert "pooled" not in backbone.layer_names()
    with pytest.raises(ConfigError, match="Unknown layer 'pooled'"):
        backbone.features("pooled")
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        logits = backbone.features("logits")(x)["logits"]
        assert torch.equal(logits, model(x).mean(1))
