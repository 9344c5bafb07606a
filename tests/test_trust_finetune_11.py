"""Fine-tuning refuses, in one line, a timm model with several classifiers whose outputs it
combines (distilled and auxiliary heads), before training and in a pipeline's check; a
pipeline's checkpoint that cannot be resumed names the fix a pipeline has (delete its run
folder), not resume=False."""

from __future__ import annotations

import os
import re
import time

import pytest
import torch
import toy_backbone  # noqa: F401  (registers the 'toy' backbone)
from conftest import hash_contents_config, make_image_folder
from finetune_child import synthetic_source

from featpipe.backbones import get_backbone
from featpipe.data import open_source
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


def _touch(folder) -> None:
    later = time.time() + 100
    for image in folder.rglob("*.jpg"):
        os.utime(image, (later, later))


def test_a_pipeline_checkpoint_that_cannot_resume_names_the_folder_to_delete(tmp_path):
    # Before: "... or resume=False (CLI: --no-resume) to start over", which a pipeline cannot
    # set: a checkpoint of sizes and mtimes (as featpipe wrote before) under hash_contents,
    # its files touched since.
    data = make_image_folder(tmp_path / "img", per_class=4, splits=("train", "val", "test"))
    config = hash_contents_config(tmp_path, "eleven", data)
    out = run_pipeline(config, progress=False, log=lambda _: None)
    (out / "results.jsonl").write_text("")  # as if stopped after its checkpoint
    [run_dir] = (out / "finetune").iterdir()
    state = torch.load(run_dir / "last.pt", weights_only=True)
    state["config"]["source"] = open_source(str(data)).fingerprint()  # sizes and mtimes
    torch.save(state, run_dir / "last.pt")
    _touch(data)
    with pytest.raises(ConfigError, match="another configuration") as caught:
        run_pipeline(config, progress=False, log=lambda _: None)
    said = str(caught.value)
    assert f"Delete the run folder {run_dir} to start over" in said
    assert "resume=False" not in said
    # A damaged checkpoint says the same.
    (run_dir / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="is damaged") as caught:
        run_pipeline(config, progress=False, log=lambda _: None)
    assert f"Delete the run folder {run_dir} to start over" in str(caught.value)
    assert "resume=False" not in str(caught.value)


def test_featpipe_finetune_still_names_no_resume(tmp_path):
    source = synthetic_source()
    FineTuner("toy", epochs=1, batch_size=8, verbose=0, run_dir=tmp_path / "ft").fit(source)
    again = FineTuner("toy", epochs=1, batch_size=8, lr=0.5, verbose=0, run_dir=tmp_path / "ft")
    with pytest.raises(ConfigError, match=re.escape("resume=False (CLI: --no-resume)")):
        again.fit(source)


@pytest.mark.filterwarnings("ignore:In the splits given")  # classes without train rows
def test_a_grid_candidate_with_batches_of_one_is_refused_before_the_first_trains(
    tmp_path, monkeypatch
):
    # Before: batch_size=8 trained in full, then batch_size=1 was refused.
    from featpipe.finetune import search

    fitted = []
    real_fit = FineTuner.fit
    monkeypatch.setattr(
        FineTuner, "fit", lambda self, *a, **k: fitted.append(1) or real_fit(self, *a, **k)
    )
    tuner = FineTuner("toy", epochs=1, batch_size=8, image_size=8, verbose=0)
    with pytest.raises(ConfigError, match=r"grid candidate \{'batch_size': 1\}: .*batch norm"):
        search.fit_grid(tuner, synthetic_source(n_test=0), {"batch_size": [8, 1]})
    assert fitted == []
    # Where batch norm is frozen, batches of one train.
    bn = FineTuner("toy", mode="bn", epochs=1, batch_size=8, image_size=8, verbose=0)
    result = search.fit_grid(bn, synthetic_source(n_test=0), {"batch_size": [8, 1]})
    assert len(result.curve) == 2
