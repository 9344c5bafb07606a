"""A fine-tune refuses, before it makes anything, a mode its backbone cannot take; refuses a
warm-up longer than the training and a training with no step; `featpipe backbones` uses the
public ``unstaged_tail``."""

from __future__ import annotations


def test_backbones_uses_the_public_unstaged_tail():
    from featpipe.cli import backbones
    from featpipe.finetune.freezing import unstaged_tail

    assert backbones.unstaged_tail is unstaged_tail
