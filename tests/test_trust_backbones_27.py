"""Gemma 4's ViT classifier (``gemma4_vit_*``) has a stage per block, as the other ViTs: it copies
its encoder's ``feature_info``, whose taps ('blocks.3') name the encoder's modules, not its own
('encoder.blocks.3'). No tap was a module of it, so nothing was opened and the whole encoder was
one stage: ``partial:1`` froze every block and ``partial:2`` was refused."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("timm")
pytest.importorskip("timm.models.gemma4_vit")

from featpipe.backbones.timm_models import create, make_backbone
from featpipe.backbones.weights import seeded
from featpipe.finetune.freezing import Mode, freeze

TINY = {"depth": 3, "embed_dim": 32, "num_heads": 2, "head_dim": 16, "intermediate_size": 64}


def _gemma():
    model = seeded(lambda: create("gemma4_vit_167m", **TINY))
    return make_backbone("timm:gemma4_vit_167m@none", model), model


def _forward_order(model: torch.nn.Module, names: list[str]) -> list[str]:
    """The modules of ``names`` in the order a forward pass runs them."""
    ran: list[str] = []
    hooks = [
        model.get_submodule(n).register_forward_pre_hook(lambda *_, n=n: ran.append(n))
        for n in names
    ]
    with torch.inference_mode():
        model(torch.rand(1, 3, 32, 32))
    for hook in hooks:
        hook.remove()
    return ran


def test_gemma4_stages_are_its_blocks_in_forward_order():
    backbone, model = _gemma()
    blocks = [(f"encoder.blocks.{i}",) for i in range(3)]
    assert backbone.stages == [("encoder.patch_embed",), *blocks]
    names = [n for stage in backbone.stages for n in stage]
    assert _forward_order(model, names) == names


@pytest.mark.parametrize("n", [1, 2, 3])
def test_gemma4_partial_freezes_exactly_the_first_stages(n):
    """partial:N freezes the patch embedding and the first N-1 blocks, nothing else."""
    backbone, model = _gemma()
    freeze(model, Mode.parse(f"partial:{n}"), backbone.stages, backbone.classifier)
    held = ("encoder.patch_embed.", *(f"encoder.blocks.{i}." for i in range(n - 1)))
    frozen = {p for p, t in model.named_parameters() if not t.requires_grad}
    assert frozen == {p for p, _ in model.named_parameters() if p.startswith(held)}
    assert any(p.startswith(held[-1]) for p in frozen)
