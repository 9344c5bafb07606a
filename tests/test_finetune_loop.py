"""The fine-tuning step's host syncs, and a diverging loss, seen from the CPU."""

from __future__ import annotations

import sys

import pytest
import torch
from test_finetune import synthetic_source, tuner

from featpipe.errors import TrainingDivergedError


@pytest.fixture(scope="module")
def source():
    return synthetic_source()


def test_the_training_step_reads_nothing_back_from_the_device(source, monkeypatch):
    """On CUDA every ``.item()``, ``int(t)`` or ``if t`` waits for the device; the loop may
    read its sums once per epoch, not once per step."""
    reads = []
    for name in ("item", "__bool__", "__int__", "__float__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name):
            if sys._getframe(1).f_code.co_filename.endswith("tuner.py"):  # not the transforms'
                reads.append(_name)
            return _original(self, *args)

        monkeypatch.setattr(torch.Tensor, name, counted)
    ft = tuner(mode="full", epochs=1, batch_size=4)
    original_epoch = type(ft)._train_epoch

    def epoch(self, replica, data, n):
        reads.clear()
        logs = original_epoch(self, replica, data, n)
        epoch.reads, epoch.steps = len(reads), len(data)
        return logs

    monkeypatch.setattr(type(ft), "_train_epoch", epoch)
    ft.fit(source)
    assert epoch.steps >= 4
    assert epoch.reads <= 3, f"{epoch.reads} reads from the device in {epoch.steps} steps"


def test_a_diverging_loss_still_stops_the_run(source):
    with pytest.raises(TrainingDivergedError, match=r"Training loss became (nan|inf) in epoch 1"):
        tuner(mode="full", epochs=1, lr=1e12, backbone_lr_scale=1.0, warmup_epochs=0).fit(source)
    assert issubclass(TrainingDivergedError, FloatingPointError)  # what it raised before


def test_cli_reports_a_diverging_loss_in_one_line(split_image_folder, tmp_path, capsys):
    from featpipe.cli import main

    args = "finetune --backbone toy --epochs 1 --batch-size 4 --no-progress --lr 1e12"
    args += " --backbone-lr-scale 1 --warmup-epochs 0"
    where = ["--data", str(split_image_folder), "--run-dir", str(tmp_path / "run")]
    assert main([*args.split(), *where]) == 2
    err = capsys.readouterr().err
    assert "featpipe finetune: error: Training loss became" in err and "lower lr" in err
