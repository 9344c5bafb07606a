"""Fine-tuning refuses, in one line, a timm model with several classifiers whose outputs it
combines (distilled and auxiliary heads), before training and in a pipeline's check; a
pipeline's checkpoint that cannot be resumed names the fix a pipeline has (delete its run
folder), not resume=False."""

from __future__ import annotations

import re

import pytest
import toy_backbone  # noqa: F401  (registers the 'toy' backbone)
from finetune_child import synthetic_source

from featpipe.backbones import get_backbone
from featpipe.errors import ConfigError
from featpipe.finetune import FineTuner
from featpipe.pipeline import config_from_dict, run_pipeline


@pytest.mark.parametrize(
    ("spec", "heads"),
    [
        ("timm:levit_128s@none", "2 classifiers (head.linear, head_dist.linear)"),
        ("timm:pit_ti_distilled_224@none", "2 classifiers (head, head_dist)"),
    ],
)
def test_a_model_with_several_classifiers_is_refused_before_training(tmp_path, spec, heads):
    # Before: replacing one head left the other giving 1000 classes: "The size of tensor a
    # (1000) must match the size of tensor b (2)" at the first batch.
    tuner = FineTuner(spec, epochs=1, batch_size=4, verbose=0, run_dir=tmp_path / "ft")
    with pytest.raises(ConfigError, match=re.escape(f"Backbone '{spec}' has {heads}")) as caught:
        tuner.fit(synthetic_source())
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "ft").exists()


def test_a_model_with_one_classifier_passes_the_check():
    from featpipe.finetune.tuner import check_one_classifier

    check_one_classifier(get_backbone("timm:resnet10t@none"))
    check_one_classifier(get_backbone("toy"))


def test_a_pipeline_check_refuses_a_model_with_several_classifiers(tmp_path):
    config = config_from_dict({
        "name": "eleven", "out": str(tmp_path / "run"), "device": "cpu",
        "source": {"data": "digits", "limits": {"train": 30, "val": 15, "test": 15}},
        "features": {"backbones": ["timm:levit_128s@none"], "workers": 0,
                     "cache_dir": str(tmp_path / "c")},
        "probes": {"heads": []},
        "finetune": {"modes": ["head"], "workers": 0},
    })  # fmt: skip
    with pytest.raises(ConfigError, match=r"finetune.modes\[0\] \('head' on timm:levit_128s"):
        run_pipeline(config, progress=False, log=lambda _: None)
    assert not (tmp_path / "c").exists()
