"""timm models built without a classifier (``num_classes=0``, timm's default for image encoders
such as NaFlexViT RADIO, SigLIP, EVA02, AIMv2) fine-tune: make_backbone puts an IdentityHead of
the pre-logits' width where timm left an Identity, which fine-tuning replaces. Their store keys
and ``pooled`` stay as they were; models with several classifiers are still refused."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

pytest.importorskip("timm")

from finetune_child import synthetic_source
from test_trust_backbones_22 import _images, _pooled, _pre_logits
from test_trust_backbones_23 import _backbone
from test_trust_backbones_25 import _meta

from featpipe.backbones import register_backbone
from featpipe.backbones.base import IdentityHead, state_dict_sha256
from featpipe.backbones.registry import _BUILTINS
from featpipe.backbones.timm_models import create, make_backbone, model_stages
from featpipe.backbones.weights import seeded
from featpipe.errors import ConfigError
from featpipe.finetune import FineTuner
from featpipe.finetune.freezing import Mode, frozen_by

TINY_VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}


def _register(name: str, model_name: str, **kwargs) -> str:
    """A builtin backbone ``name``: the timm model ``model_name`` built with ``kwargs``."""
    if name not in _BUILTINS:

        @register_backbone(name)
        def _build(spec):
            return make_backbone(str(spec), seeded(lambda: create(model_name, **kwargs)))

    return name


@pytest.mark.parametrize(
    "name, shrink",
    [
        ("vit_tiny_patch16_224", {**TINY_VIT, "num_classes": 0}),
        ("convnext_atto", {"depths": (1, 1, 1, 1), "num_classes": 0}),  # norm before pre-logits
        ("naflexvit_base_patch16_radio_v3", {"depth": 1}),  # num_classes=0 by default
        ("caformer_s18", {"num_classes": 0}),  # its MLP head is gone too
    ],
)
def test_a_headless_model_keeps_its_key_and_pooled(name, shrink):
    """The IdentityHead has no parameters: the state-dict hash (the store keys) is the one of
    the model as timm built it, a second make_backbone gives the same identity, and ``pooled``
    is still timm's pre-logits, whose width the head takes."""
    built = seeded(lambda: create(name, **shrink))
    as_timm_built = state_dict_sha256(built)
    backbone, model = _backbone(name, **shrink)
    head = model.get_submodule(backbone.classifier)
    x = _images(backbone.preprocessing.crop)
    pre_logits = _pre_logits(model, x)
    assert torch.equal(_pooled(backbone, x), pre_logits)
    assert isinstance(head, IdentityHead) and head.in_features == pre_logits.shape[1]
    assert backbone.identity()["pooled_inputs"] == [backbone.classifier]
    assert backbone.weights_sha256 == state_dict_sha256(model) == as_timm_built
    assert make_backbone(backbone.spec, model).identity() == backbone.identity()


@pytest.mark.filterwarnings("ignore:The fine-tune chose epoch 0")  # 4 val rows: a coin toss
def test_a_headless_model_fine_tunes():
    """Before: "Backbone 'headless_tiny_vit' has no linear classifier to replace (found
    Identity)"."""
    spec = _register("headless_tiny_vit", "vit_tiny_patch16_224", **TINY_VIT, num_classes=0)
    source = synthetic_source(n_train=8, n_val=4, n_test=4)
    tuner = FineTuner(spec, epochs=1, batch_size=8, image_size=32, verbose=0, patience=None)
    tuner.fit(source)
    head = tuner.model_.get_submodule(tuner.head_)
    linear = head[-1] if isinstance(head, nn.Sequential) else head
    assert type(linear) is nn.Linear and (linear.in_features, linear.out_features) == (32, 3)
    untrained, stepped = tuner.history_  # epoch 0 (before training), epoch 1: one step
    assert stepped["epoch"] == 1 and math.isfinite(stepped["train_loss"])
    assert stepped["val_loss"] != untrained["val_loss"]  # the step changed the model
    assert tuner.predict_proba(source).shape == (16, 3)


@pytest.mark.parametrize(
    "name, shrink, classifiers",
    [
        ("deit_tiny_distilled_patch16_224", {"depth": 1}, "head, head_dist"),
        ("levit_128s", {"depth": (1, 1, 1)}, "head.linear, head_dist.linear"),
    ],
)
def test_a_headless_model_with_several_classifiers_is_still_refused(
    tmp_path, name, shrink, classifiers
):
    """Replacing one Identity would leave the other giving the pre-logits beside the logits:
    they stay Identities, which fine-tuning refuses before training."""
    spec = _register(f"headless_{name}", name, **shrink, num_classes=0)
    _, model = _backbone(name, **shrink, num_classes=0)
    assert all(
        type(model.get_submodule(n.split(".")[0])) is nn.Identity for n in classifiers.split(", ")
    )
    tuner = FineTuner(spec, epochs=1, batch_size=4, verbose=0, run_dir=tmp_path / "ft")
    with pytest.raises(ConfigError, match="no linear classifier to replace"):
        tuner.fit(synthetic_source(n_train=8, n_val=4, n_test=4))
    assert not (tmp_path / "ft").exists()


@pytest.mark.parametrize("name, stem", [("mvitv2_tiny", ()), ("mvitv2_small_cls", ("cls_token",))])
def test_mvitv2_stages_are_its_stages(name, stem):
    """Its feature_info taps name 'block.N', which is no module: nothing was opened, and its
    four stages were one (with the norm), so partial:2 froze all but the head and partial:3
    was refused."""
    model = _meta(name)
    stages = model_stages(model, "head")
    blocks = [(f"stages.{i}",) for i in range(3)]
    assert stages == [(*stem, "patch_embed"), *blocks, ("stages.3", "norm")]
    frozen = frozen_by(model, Mode.parse("partial:2"), stages, "head")
    assert set(frozen) == {*stem, "patch_embed", "stages.0"}


@pytest.mark.parametrize("name", ["twins_svt_small", "twins_pcpvt_small"])
def test_twins_stages_are_its_scales_in_forward_order(name):
    """Its taps name 'block.N' too, and it registers every patch embedding, then every scale's
    blocks, then every positional convolution: its stages were [patch_embeds, blocks,
    (pos_block, norm)], so partial:1 froze every patch embedding and partial:2 every block."""
    model = _meta(name)
    stages = model_stages(model, "head")
    assert stages == [
        *[s for i in range(3) for s in ((f"patch_embeds.{i}",), (f"blocks.{i}", f"pos_block.{i}"))],
        ("patch_embeds.3",),
        ("blocks.3", "pos_block.3", "norm"),
    ]
    # every part that holds parameters is in one stage, once
    held = [n for n, m in model.named_modules() if n.count(".") == 1 and list(m.parameters())]
    assert sorted(n for stage in stages for n in stage) == sorted([*held, "norm"])
    # and the stages run in their order
    ran = []
    for i, stage in enumerate(stages):
        for part in stage:
            for m in model.get_submodule(part).modules():
                m.register_forward_hook(lambda *_, i=i: ran.append(i))
    with torch.device("meta"), torch.no_grad():
        model.forward_features(torch.empty(1, 3, 224, 224))
    assert ran == sorted(ran) and set(ran) == set(range(len(stages)))
    frozen = frozen_by(model, Mode.parse("partial:2"), stages, "head")
    assert set(frozen) == {"patch_embeds.0", "blocks.0", "pos_block.0"}
