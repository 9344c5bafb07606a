"""Fine-tuning modes say what they do: ``bn`` on a backbone without batch norm, ``partial:N``
with every stage frozen, and a best.pt left by another run in the same folder."""

from __future__ import annotations

import warnings

import pytest
import torch
from finetune_child import synthetic_source

from featpipe.backbones import get_backbone
from featpipe.finetune import FineTuner, Mode, checkpoint
from featpipe.finetune.freezing import freeze
from featpipe.finetune.tuner import _attach_head

PARAMS = dict(epochs=1, batch_size=8, lr=0.05, patience=None, verbose=0)


@pytest.fixture(scope="module")
def source():
    return synthetic_source()


def test_bn_mode_without_batch_norm_warns_and_is_recorded(source):
    with pytest.warns(UserWarning, match=r"toy_nobn in mode 'bn': the backbone has no batch-norm"):
        ft = FineTuner("toy_nobn", mode="bn", **PARAMS).fit(source)
    assert "trains exactly like 'full'" in ft.history_[0]["mode_note"]
    # On a backbone with batch norm, bn means what it says: no note, no warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", "The fine-tune chose")  # 1 epoch: at chance on val
        ft = FineTuner("toy", mode="bn", **PARAMS).fit(source)
    assert "mode_note" not in ft.history_[0]


def _trainable(spec: str, n: int | None) -> dict[str, int]:
    """Trainable parameters (by name) of ``spec`` with a new 3-class head under partial:n
    (every stage when n is None)."""
    backbone = get_backbone(spec)
    model, head = _attach_head(backbone, 3, 0.0)
    mode = Mode("partial", n or len(backbone.stages))
    freeze(model, mode, backbone.stages, head)
    return {k: p.numel() for k, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(
    ("spec", "before_pooled"),
    [
        # MobileNetV3: pooled is classifier.0 (Linear + Hardswish)'s output, 1024 wide.
        ("torchvision:mobilenet_v3_small@none", "classifier.0"),
        # ConvNeXt: the final LayerNorm sits in the classifier, before the Linear.
        ("torchvision:convnext_tiny@none", "classifier.0"),
    ],
)
def test_partial_with_every_stage_frozen_freezes_what_computes_pooled(spec, before_pooled):
    trainable = _trainable(spec, None)
    head = get_backbone(spec).classifier
    assert trainable and all(k.startswith(head + ".") for k in trainable), sorted(trainable)
    # With a stage left training, what follows it trains too.
    assert f"{before_pooled}.weight" in _trainable(spec, 1)


def test_partial_every_stage_keeps_the_pre_pooled_dropout_off():
    backbone = get_backbone("torchvision:mobilenet_v3_small@none")
    model, head = _attach_head(backbone, 3, 0.0)
    frozen = freeze(model, Mode("partial", len(backbone.stages)), backbone.stages, head)
    dropout = model.get_submodule("classifier.2")  # before classifier.3, the new head
    assert any(m is dropout for m in frozen.eval_modules)


def test_a_restart_crashed_before_last_pt_leaves_the_best_of_the_run_last_pt_names(
    tmp_path, source, monkeypatch
):
    # Run A ends with its best at epoch 0 (the model before training).
    monkeypatch.setattr(
        FineTuner,
        "_validate",
        lambda self: {"val_loss": 1.0, "val_accuracy": 0.5 if self.history_ else 0.9},
    )
    a = FineTuner("toy", seed=0, run_dir=tmp_path, **PARAMS).fit(source)
    assert a.best_epoch_ == 0
    best_a = {k: v.clone() for k, v in a.model_.state_dict().items()}

    # Run B starts over in the same folder (another seed) and fails writing last.pt at its
    # epoch 0 (a full disk): its epoch-0 best waits as best.pt.next.
    save = checkpoint.save

    def disk_full(path, state):
        if path.name == checkpoint.LAST:
            raise OSError(28, "No space left on device")
        save(path, state)

    monkeypatch.setattr(checkpoint, "save", disk_full)
    with pytest.raises(OSError):
        FineTuner("toy", seed=1, run_dir=tmp_path, resume=False, **PARAMS).fit(source)
    assert (tmp_path / checkpoint.PENDING).exists()
    monkeypatch.setattr(checkpoint, "save", save)

    # A's command again resumes A (its last.pt): the model must be A's best, not B's.
    again = FineTuner("toy", seed=0, run_dir=tmp_path, **PARAMS).fit(source)
    assert again.best_epoch_ == 0
    final = again.model_.state_dict()
    assert all(torch.equal(final[k], v) for k, v in best_a.items())
    assert checkpoint.load(tmp_path / checkpoint.BEST)["epoch"] == 0
    assert not (tmp_path / checkpoint.PENDING).exists()


def test_checkpoints_from_before_the_run_token_still_settle(tmp_path):
    # last.pt and best.pt.next written before "run" was recorded: the epoch alone decides.
    checkpoint.save(tmp_path / checkpoint.PENDING, {"epoch": 2, "model": {}})
    checkpoint.settle_best(tmp_path, 2, None)
    assert checkpoint.load(tmp_path / checkpoint.BEST)["epoch"] == 2
    # A token-bearing best.pt.next under a last.pt without one is from a later run: dropped.
    checkpoint.save(tmp_path / checkpoint.PENDING, {"epoch": 0, "run": "b", "model": {}})
    checkpoint.settle_best(tmp_path, 0, None)
    assert not (tmp_path / checkpoint.PENDING).exists()
    assert checkpoint.load(tmp_path / checkpoint.BEST)["epoch"] == 2
