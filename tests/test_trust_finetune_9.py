"""A fine-tune refuses, before it makes anything, a mode its backbone cannot take; refuses a
warm-up longer than the training and a training with no step; `featpipe backbones` uses the
public ``unstaged_tail``."""

from __future__ import annotations

import pytest
from finetune_child import synthetic_source
from test_finetune import tuner

from featpipe.cli import main as cli_main
from featpipe.errors import ConfigError
from featpipe.finetune import ddp
from featpipe.finetune import tuner as tuner_module


def test_a_mode_the_backbone_cannot_take_is_refused_before_the_run_folder(
    split_image_folder, tmp_path, capsys
):
    # partial:99 on a backbone of 3 stages was refused after the run folder was made: an
    # empty folder holding last.pt.lock was left behind (by the CLI and by FineTuner.fit).
    run_dir = tmp_path / "runs" / "ft"
    with pytest.raises(ConfigError, match=r"'partial:99' freezes more stages .* \(3: 0 stem"):
        tuner(mode="partial:99", run_dir=run_dir).fit(synthetic_source())
    assert not run_dir.exists()
    args = "finetune --backbone toy --epochs 1 --batch-size 4 --no-progress --mode partial:99"
    code = cli_main([*args.split(), "--data", str(split_image_folder), "--run-dir", str(run_dir)])
    assert code == 2 and "'partial:99' freezes more stages" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # made for it too (test_trust_finetune_10)


def test_a_run_folder_that_existed_is_kept_when_the_mode_is_refused(split_image_folder, tmp_path):
    kept = tmp_path / "kept"
    kept.mkdir()
    args = "finetune --backbone toy --epochs 1 --batch-size 4 --no-progress --mode partial:9"
    assert cli_main([*args.split(), "--data", str(split_image_folder), "--run-dir", str(kept)]) == 2
    assert kept.is_dir() and not any(kept.iterdir())


@pytest.mark.parametrize("epochs, warmup", [(1, 2.0), (3, 3.5)])
def test_a_warm_up_longer_than_the_training_is_refused(epochs, warmup, split_image_folder, capsys):
    # The learning rate never reached its set value, silently.
    with pytest.raises(ConfigError, match=rf"warmup_epochs {warmup:g} is longer than epochs"):
        tuner(epochs=epochs, warmup_epochs=warmup).fit(synthetic_source())
    args = f"finetune --backbone toy --epochs {epochs} --warmup-epochs {warmup} --no-progress"
    assert cli_main([*args.split(), "--data", str(split_image_folder)]) == 2
    err = capsys.readouterr().err  # in flags: "Use --warmup-epochs of at most ..." too
    assert f"--warmup-epochs {warmup:g} is longer than epochs {epochs}" in err
    assert "warmup_epochs" not in err


def test_a_warm_up_as_long_as_the_training_and_no_training_are_accepted():
    tuner(epochs=1, warmup_epochs=1.0)._check_params()
    tuner(epochs=0, warmup_epochs=1.0)._check_params()  # LP-FT's probe alone: nothing warms


def test_a_rank_with_no_training_step_is_refused(monkeypatch):
    # Under DDP, DistributedSampler(drop_last=True) gives each of 4 ranks 3 // 4 = 0 of 3
    # train rows: every rank "trained" epochs of no step, and the run reported them.
    monkeypatch.setattr(ddp, "active", lambda: True)
    monkeypatch.setattr(ddp, "world_size", lambda: 4)
    monkeypatch.setattr(ddp, "rank", lambda: 0)
    monkeypatch.setattr(tuner_module.ddp, "joined", _nothing)
    source = synthetic_source(n_train=3, n_val=3, n_test=0)
    with pytest.raises(ConfigError, match=r"3 train rows shared by 4 ranks give each rank none"):
        tuner(batch_size=8).fit(source)


def test_one_process_always_takes_a_step():
    # Its loader drops the last batch only when there are more rows than a batch.
    for n_train in (3, 8, 9):
        fitted = tuner(epochs=1, batch_size=8).fit(synthetic_source(n_train=n_train, n_test=0))
        assert fitted.history_[1]["train_loss"] > 0


def test_backbones_uses_the_public_unstaged_tail():
    from featpipe.cli import backbones
    from featpipe.finetune.freezing import unstaged_tail

    assert backbones.unstaged_tail is unstaged_tail


class _nothing:
    def __init__(self, device):
        pass

    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
