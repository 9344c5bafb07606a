"""A timm model with several classifiers built without them (``num_classes=0``: a distilled DeiT,
a LeViT) is refused in one line that says so: what it is (built without its classifiers, which
it combines), that fine-tuning replaces one only, and how to go on. Before, the refusal came
from replacing the first Identity: "has no linear classifier to replace (found Identity);
fine-tuning needs one whose input is the pooled features", which named neither the missing
classifiers nor num_classes."""

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
from featpipe.finetune.tuner import check_one_classifier

SHRINK = {
    "deit_tiny_distilled_patch16_224": {"depth": 1},
    "levit_128s": {"depth": (1, 1, 1)},
}


def _headless(name: str):
    model = seeded(lambda: create(name, **SHRINK[name], num_classes=0))
    return make_backbone(f"timm:{name}@none", model)


@pytest.mark.parametrize(
    "name, classifiers",
    [
        ("deit_tiny_distilled_patch16_224", "2 (head, head_dist)"),
        ("levit_128s", "2 (head.linear, head_dist.linear)"),
    ],
)
def test_headless_several_classifiers_refusal_says_why_and_how(name, classifiers):
    with pytest.raises(ConfigError) as info:
        check_one_classifier(_headless(name))
    message = str(info.value)
    assert "\n" not in message
    assert f"built without classifiers (num_classes=0) and combines {classifiers}" in message
    assert "replaces one classifier only" in message
    assert "leave num_classes out" in message and "non-distilled" in message


def test_a_model_with_its_classifiers_keeps_its_refusal():
    model = seeded(lambda: create("deit_tiny_distilled_patch16_224", depth=1))
    backbone = make_backbone("timm:deit_tiny_distilled_patch16_224@none", model)
    with pytest.raises(ConfigError, match=r"has 2 classifiers \(head, head_dist\) whose outputs"):
        check_one_classifier(backbone)


def test_fine_tuner_refuses_it_before_the_run_folder(tmp_path):
    name = "headless_distilled_deit_28"
    if name not in _BUILTINS:

        @register_backbone(name)
        def _build(spec):
            return _headless("deit_tiny_distilled_patch16_224")

    tuner = FineTuner(name, epochs=1, batch_size=4, verbose=0, run_dir=tmp_path / "ft")
    with pytest.raises(ConfigError, match=r"built without classifiers \(num_classes=0\)"):
        tuner.fit(synthetic_source(n_train=8, n_val=4, n_test=4))
    assert not (tmp_path / "ft").exists()
