"""A fine-tune checkpoint whose optimiser state does not fit the parameters that train now
(an old partial:N checkpoint, which records no frozen modules, under another stage list) is
refused in one line, not with torch's traceback; a --grid setting given twice is refused; mode
'head' trains the head only, also on a model with parameters of its own (a ViT's cls_token); a
pipeline's LP-FT grid of image sizes computes its probe's features (the store has one size)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import toy_backbone  # noqa: F401  (registers the 'toy' backbone)
from conftest import make_image_folder
from test_trust_finetune_10 import STAGES

from featpipe.cli import main as cli_main
from featpipe.errors import ConfigError
from featpipe.finetune import FineTuner, checkpoint
from featpipe.finetune.freezing import Mode, freeze
from featpipe.pipeline import config_from_dict, run_pipeline
from featpipe.report import read_results


def test_an_old_partial_checkpoint_under_another_stage_list_is_refused_in_one_line(
    tmp_path, monkeypatch, capsys
):
    # Before: ValueError traceback from torch's Optimizer.load_state_dict.
    data = make_image_folder(tmp_path / "img", per_class=4, splits=("train", "val", "test"))
    run_dir = tmp_path / "ft"
    args = "finetune --backbone toy_staged10 --mode partial:1 --epochs 1 --batch-size 4"
    argv = [*args.split(), "--no-progress", "--data", str(data), "--run-dir", str(run_dir)]
    assert cli_main(argv) == 0
    last = run_dir / "last.pt"
    state = torch.load(last, weights_only=True)
    assert state["config"].pop("frozen") == ["stem"]
    torch.save(state, last)  # as featpipe wrote it before checkpoints recorded 'frozen'
    monkeypatch.setitem(STAGES, "toy_staged10", [("stem", "stage1"), "stage2"])
    capsys.readouterr()
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "last.pt's optimiser state does not fit the parameters that train now" in err
    assert "--no-resume" in err and "Traceback" not in err


def test_optimiser_state_of_other_shapes_is_refused(tmp_path):
    # Same group sizes, other parameters: momentum would load into the wrong ones.
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2, 2))
    before = torch.optim.SGD([a, b], lr=0.1, momentum=0.9)
    (a.sum() + b.sum()).backward()
    before.step()
    saved = before.state_dict()
    checkpoint.check_optimizer(saved, torch.optim.SGD([a, b], lr=0.1, momentum=0.9), Path("x"))
    swapped = torch.optim.SGD([b, a], lr=0.1, momentum=0.9)
    with pytest.raises(ConfigError, match=r"groups of \[2\] parameters in last.pt, \[2\] now"):
        checkpoint.check_optimizer(saved, swapped, tmp_path / "last.pt")


def test_a_grid_setting_given_twice_is_refused(tmp_path, capsys):
    # Before: the second --grid lr replaced the first; a one-candidate grid (lr=0.2) trained.
    run_dir = tmp_path / "ft"
    args = "finetune --backbone toy --epochs 1 --no-progress --grid lr=0.1 --grid lr=0.2"
    assert cli_main([*args.split(), "--data", str(tmp_path), "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "--grid lr is given twice ('lr=0.1', 'lr=0.2')" in err and "--grid lr=V1,V2" in err
    assert not run_dir.exists()


def test_mode_head_freezes_the_parameters_the_model_holds_itself():
    # Before: a timm ViT's cls_token and pos_embed (parameters of the model, in no submodule)
    # trained in mode 'head'.
    class ViTLike(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.cls_token = torch.nn.Parameter(torch.zeros(1, 4))
            self.blocks = torch.nn.Linear(4, 4)
            self.head = torch.nn.Linear(4, 3)

    model = ViTLike()
    frozen = freeze(model, Mode.parse("head"), ["blocks"], "head")
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        "head.weight",
        "head.bias",
    ]
    assert "cls_token" in frozen.params


def test_a_pipeline_lpft_grid_of_image_sizes_computes_its_probe_features(tmp_path):
    # Before: the probe read the store at the features' image size; the candidate at
    # another size raised StoreMismatchError after the first candidate had trained.
    config = config_from_dict({
        "name": "grid", "out": str(tmp_path / "run"), "device": "cpu",
        "source": {"data": "digits", "limits": {"train": 30, "val": 15, "test": 15}},
        "features": {"backbones": ["toy"], "layers": ["pooled"], "workers": 0,
                     "cache_dir": str(tmp_path / "c")},
        "probes": {"heads": ["knn"]},
        "finetune": {"modes": ["lpft"], "workers": 0, "epochs": 1, "batch_size": 8,
                     "grid": {"image_size": [None, 24]}},
    })  # fmt: skip
    run_pipeline(config, progress=False, log=lambda _: None)
    rows = read_results(tmp_path / "run" / "results.jsonl")
    [row] = [r for r in rows if r["kind"] == "finetune"]
    assert len(row["curve"]) == 2 and row["provenance"]["store"] is None


@pytest.mark.parametrize("given", ["digits", np.zeros((2, 8, 8, 3), np.uint8)])
def test_fit_refuses_what_is_no_image_source_in_one_line(given, tmp_path):
    # Before: AttributeError ("'str' object has no attribute 'classes'").
    tuner = FineTuner("toy", epochs=1, verbose=0, run_dir=tmp_path / "ft")
    with pytest.raises(ConfigError, match=r"FineTuner.fit takes an ImageSource; got (str|ndarray)"):
        tuner.fit(given)
    assert not (tmp_path / "ft").exists()
