"""Fine-tuning a timm model without a head at its top (Gemma 4's ViT encoder) is refused
before training, instead of replacing a Linear inside its last block."""

from __future__ import annotations

import pytest

pytest.importorskip("timm")

from finetune_child import synthetic_source

from featpipe.backbones import register_backbone
from featpipe.backbones.registry import _BUILTINS
from featpipe.backbones.timm_models import create, make_backbone
from featpipe.backbones.weights import seeded
from featpipe.errors import ConfigError
from featpipe.finetune import FineTuner

NAME = "headless_tiny_gemma4_enc"
TINY_GEMMA_ENC = {"depth": 2, "embed_dim": 32, "num_heads": 2, "head_dim": 16}

if NAME not in _BUILTINS:

    @register_backbone(NAME)
    def _build(spec):
        model = seeded(
            lambda: create("gemma4_vit_167m_enc", **TINY_GEMMA_ENC, intermediate_size=64)
        )
        return make_backbone(str(spec), model)


def test_fine_tuning_a_model_without_a_head_is_refused_before_training(tmp_path):
    """Before: the tuner replaced blocks.1.mlp.down_proj.linear (64 -> 32) by a Linear to
    3 classes, and the forward pass failed inside the block."""
    tuner = FineTuner(
        NAME, epochs=1, batch_size=4, image_size=48, verbose=0, run_dir=tmp_path / "ft"
    )
    with pytest.raises(ConfigError, match="no linear classifier to replace") as refused:
        tuner.fit(synthetic_source(n_train=8, n_val=4, n_test=4))
    # Before the tuner checked: "found NoneType", which named neither the cause nor a fix.
    assert "an encoder without a classifier at its top" in str(refused.value)
    assert "NoneType" not in str(refused.value)
    assert not (tmp_path / "ft").exists()
