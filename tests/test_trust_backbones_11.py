"""Trust review of backbones (11): CoaT's stages in forward order (partial:N), attention
weights whose average is a constant, and TNT's projections before the class token."""

from __future__ import annotations

import pytest
import torch
from test_trust_backbones_10 import _tiny

from featpipe.finetune.freezing import Mode, frozen_by

_COAT = dict(img_size=32, embed_dims=(16,) * 4, serial_depths=(2,) * 4, num_heads=8,
             mlp_ratios=(1,) * 4)  # fmt: skip


@pytest.mark.parametrize("name, parallel", [("coat_lite_tiny", 0), ("coat_tiny", 1)])
def test_coat_stages_follow_the_forward_pass(name, parallel):
    # CoaT registers every patch embedding, then every positional encoding, then the blocks:
    # partial:2 froze patch_embed1 and patch_embed2 (and all four class tokens), leaving the
    # first serial blocks, which run between them, to train
    options = dict(_COAT, parallel_depth=parallel) if parallel else _COAT
    bb = _tiny(name, 32, **options)
    first: dict[str, int] = {}

    def called(name: str) -> None:  # a pre-hook returning a value would replace the input
        first.setdefault(name, len(first))

    handles = [
        m.register_forward_pre_hook(lambda _m, _i, n=n: called(n))
        for n, m in bb.model.named_children()
    ]
    with torch.inference_mode():
        bb.model(torch.zeros(1, 3, 32, 32))
    for h in handles:
        h.remove()
    starts = [min(first[n] for n in stage if n in first) for stage in bb.stages]
    assert starts == sorted(starts), bb.stages
    assert bb.stages[:2] == [
        ("patch_embed1", "cls_token1"),
        ("serial_blocks1", "cpe1", "crpe1"),
    ]
    frozen = frozen_by(bb.model, Mode.parse("partial:2"), bb.stages, bb.classifier)
    assert set(frozen) == {"patch_embed1", "serial_blocks1", "cpe1", "crpe1", "cls_token1"}
    # every parameter but the head's is in exactly one stage
    staged = [n for stage in bb.stages for n in stage]
    assert len(staged) == len(set(staged))
    for p in dict(bb.model.named_parameters()):
        assert p.startswith("head.") or any(p == n or p.startswith(n + ".") for n in staged), p
