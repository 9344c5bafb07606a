"""timm stages hold whole blocks: a ``feature_info`` tap on an activation inside a block (legacy
Xception's 'block2.rep.0', NASNet's and PNASNet's 'cell_4.conv_1x1.act') no longer splits that
block into two stages, which shifted what ``partial:N`` froze; containers of blocks are still
opened (Xception41's 'blocks', ConvNeXt's 'stages', a ViT's 'blocks'). Models are built on the
meta device where only their structure is read."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("timm")

from featpipe.backbones.timm_models import create, make_backbone, model_stages
from featpipe.backbones.weights import seeded
from featpipe.finetune.freezing import Mode, frozen_by


def _meta(name: str, **kwargs):
    import timm

    with torch.device("meta"):
        return timm.create_model(name, pretrained=False, **kwargs)


def test_legacy_xception_stages_are_whole_blocks():
    """Blocks 2, 3 and 12 were two stages each (skip + skipbn, then rep), so partial:4 froze
    block2's shortcut but trained its main path."""
    model = seeded(lambda: create("legacy_xception"))
    backbone = make_backbone("timm:legacy_xception@none", model)
    blocks = [(f"block{i}",) for i in range(1, 13)]
    assert backbone.stages == [
        ("conv1", "bn1"),
        ("conv2", "bn2"),
        *blocks,
        ("conv3", "bn3"),
        ("conv4", "bn4"),
    ]
    frozen = frozen_by(model, Mode.parse("partial:4"), backbone.stages, backbone.classifier)
    assert frozen == ("conv1", "bn1", "conv2", "bn2", "block1", "block2")


@pytest.mark.parametrize(
    "name, cells", [("nasnetalarge", "reduction_cell_0"), ("pnasnet5large", "cell_4")]
)
def test_nasnet_cells_are_one_stage_each(name, cells):
    model = _meta(name)
    stages = model_stages(model, "last_linear")
    tops = [n for n, m in model.named_children() if next(m.parameters(), None) is not None]
    assert stages[0] == (tops[0],) and [s for (s,) in stages] == tops[: len(stages)]
    assert (cells,) in stages and (f"{cells}.conv_1x1",) not in stages


@pytest.mark.parametrize(
    "name, first, last, count",
    [
        # a tap inside each block of a Sequential: the Sequential is still opened
        ("xception41", ("stem",), ("blocks.12",), 14),
        ("convnext_atto", ("stem",), ("stages.3",), 5),
        ("resnet18", ("conv1", "bn1"), ("layer4",), 5),
        # a nested ModuleList of blocks ('encoder.blocks.3'): its blocks were one stage
        ("qwen3_vit_88m", ("encoder.pos_embed", "encoder.patch_embed"), ("encoder.blocks.11",), 13),
    ],
)
def test_containers_of_blocks_are_still_opened(name, first, last, count):
    model = _meta(name)
    stages = model_stages(model, model.pretrained_cfg["classifier"])
    assert (stages[0], stages[-1], len(stages)) == (first, last, count)


@pytest.mark.parametrize(
    "name, shrink",
    [
        ("xcit_nano_12_p16_224", {"depth": 1}),  # class-attention blocks after the patch blocks
        ("ese_vovnet19b_slim_dw", {}),
        ("xception41", {}),
        ("vitamin_small_224", {}),
        ("samvit_base_patch16_224", {"depth": 1}),  # its neck, then a pooled map
    ],
)
def test_pooled_is_timms_pre_logits_in_modules_not_surveyed_before(name, shrink):
    """``pooled`` equals timm's ``forward_head(forward_features(x), pre_logits=True)`` at a
    small input: fine as it was (VOLO is pinned in test_trust_backbones_22)."""
    model = seeded(lambda: create(name, **shrink))
    backbone = make_backbone(f"timm:{name}@none", model)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = model.forward_head(model.forward_features(x), pre_logits=True)
        got = backbone.features("pooled")(x)["pooled"]
    assert torch.equal(got, expected)
