"""Resuming a fine-tune checks the backbone's identity, which its spec leaves out: a weights
file rewritten under the same path, or a release changing the preprocessing, must not continue
a checkpoint trained on the old version."""

from __future__ import annotations

import json

import pytest
import torch
import toy_backbone
from finetune_child import synthetic_source
from test_finetune import StopAfter
from test_trust_pipeline_4 import build_toy_file

from featpipe.backbones import Preprocessing, register_backbone, unregister_backbone
from featpipe.backbones.registry import _BUILTINS
from featpipe.cli import main as cli_main
from featpipe.errors import ConfigError
from featpipe.finetune import FineTuner, checkpoint

IDENTITY = "backbone_identity"  # the key of checkpoint configs that records it
START_OVER = r"Use another run directory, or resume=False \(CLI: --no-resume\) to start over"


def tuner(backbone: str = "toy", **kw) -> FineTuner:
    params = dict(epochs=2, batch_size=8, lr=0.05, patience=None, verbose=0, mode="head")
    return FineTuner(backbone, **{**params, **kw})


def interrupted_after_epoch_1(backbone: str, run_dir) -> None:
    with pytest.raises(KeyboardInterrupt):
        tuner(backbone, run_dir=run_dir, callbacks=[StopAfter(1)]).fit(synthetic_source())


@pytest.fixture
def weights_file(tmp_path):
    """A state-dict file for ``toyfile@PATH``; ``rewrite(seed)`` saves other weights there."""
    path = tmp_path / "w.pth"

    def rewrite(seed: int) -> None:
        torch.manual_seed(seed)
        torch.save(toy_backbone.ToyNet().state_dict(), path)

    rewrite(0)
    register_backbone("toyfile", replace=True)(build_toy_file)
    yield path, rewrite
    unregister_backbone("toyfile")


def test_a_checkpoint_of_a_rewritten_weights_file_is_not_resumed(weights_file, tmp_path):
    # Before: the run resumed at epoch 1 from the old weights' checkpoint, and the model (its
    # frozen backbone the old file's) and history were reported as the new file's.
    path, rewrite = weights_file
    run_dir = tmp_path / "run"
    interrupted_after_epoch_1(f"toyfile@{path}", run_dir)
    rewrite(1)  # trained again, saved to the same path
    refused = rf"\(backbone_identity differs in weights_sha256\)\. {START_OVER}"
    with pytest.raises(ConfigError, match=refused):
        tuner(f"toyfile@{path}", run_dir=run_dir).fit(synthetic_source())
    fresh = tuner(f"toyfile@{path}", run_dir=run_dir, resume=False).fit(synthetic_source())
    assert fresh.start_epoch_ == 0
    new = torch.load(path, weights_only=True)["stem.0.weight"]
    assert torch.equal(fresh.model_.state_dict()["stem.0.weight"], new)  # head mode: frozen
    # Its checkpoint records the new file's identity, and resumes.
    assert tuner(f"toyfile@{path}", run_dir=run_dir).fit(synthetic_source()).start_epoch_ == 2


def test_a_checkpoint_made_with_another_preprocessing_is_not_resumed(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    interrupted_after_epoch_1("toy", run_dir)

    def fixed(spec):  # a release fixes the model's resize
        backbone = toy_backbone.build_toy(spec)
        backbone.preprocessing = Preprocessing(resize=40, crop=32)
        return backbone

    monkeypatch.setitem(_BUILTINS._entries, "toy", fixed)
    with pytest.raises(ConfigError, match=r"\(backbone_identity differs in preprocessing\)"):
        tuner(run_dir=run_dir).fit(synthetic_source())


def test_a_checkpoint_without_a_recorded_identity_still_resumes(tmp_path):
    # Checkpoints written before the identity was recorded resume as they did: everything
    # else in their config is still checked.
    run_dir = tmp_path / "run"
    interrupted_after_epoch_1("toy", run_dir)
    last = checkpoint.load(run_dir / checkpoint.LAST)
    last["config"].pop(IDENTITY, None)
    checkpoint.save(run_dir / checkpoint.LAST, last)
    resumed = tuner(run_dir=run_dir).fit(synthetic_source())
    assert resumed.start_epoch_ == 1 and resumed.history_[-1]["epoch"] == 2
    assert IDENTITY in checkpoint.load(run_dir / checkpoint.LAST)["config"]
    with pytest.raises(ConfigError, match=r"lr: checkpoint 0\.05, now 0\.1"):
        tuner(run_dir=run_dir, lr=0.1).fit(synthetic_source())


def test_cli_refuses_to_resume_over_rewritten_weights_in_one_line(
    weights_file, split_image_folder, tmp_path, capsys
):
    path, rewrite = weights_file
    args = f"finetune --backbone toyfile@{path} --mode head --epochs 1 --batch-size 4"
    args += f" --no-progress --data {split_image_folder} --run-dir {tmp_path / 'run'}"
    assert cli_main(args.split()) == 0
    rewrite(1)
    capsys.readouterr()
    assert cli_main(args.split()) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("featpipe finetune: error: Checkpoint ") and "\n" not in err
    assert "backbone_identity differs in weights_sha256" in err and "--no-resume" in err
    assert cli_main([*args.split(), "--no-resume"]) == 0


@pytest.mark.parametrize(
    ("saved", "now", "said"),
    [
        ({"loss": "mse"}, {}, "loss: checkpoint 'mse', now 'cross_entropy'"),
        ({}, {"decode": "fast"}, "decode: checkpoint 'exact', now 'fast'"),
    ],
)
def test_a_refused_resume_names_a_default_setting_by_its_value(tmp_path, saved, now, said):
    # Settings left out of checkpoint configs at their default were named as None ("loss:
    # checkpoint 'mse', now None"), though the run asked for cross_entropy.
    run_dir = tmp_path / "run"
    tuner(epochs=1, run_dir=run_dir, **saved).fit(synthetic_source())
    with pytest.raises(ConfigError, match=rf"\({said}\)"):
        tuner(epochs=1, run_dir=run_dir, **now).fit(synthetic_source())


def test_a_refused_resume_leaves_the_run_folders_config_json(split_image_folder, tmp_path):
    # config.json was rewritten before the checkpoint refused the new settings: the folder
    # then described lr 0.1 beside the checkpoint, metrics and result row of lr 0.05.
    run_dir = tmp_path / "run"
    args = "finetune --backbone toy --mode head --epochs 1 --batch-size 4 --no-progress"
    args = [*args.split(), "--data", str(split_image_folder), "--run-dir", str(run_dir)]
    assert cli_main([*args, "--lr", "0.05"]) == 0
    written = (run_dir / "config.json").read_text()
    assert cli_main([*args, "--lr", "0.1"]) == 2
    assert (run_dir / "config.json").read_text() == written
    assert cli_main([*args, "--lr", "0.1", "--no-resume"]) == 0  # starting over rewrites it
    assert json.loads((run_dir / "config.json").read_text())["lr"] == 0.1
