"""Tiny CNNs registered as built-in backbones for fast tests (also in subprocesses): ``toy``,
and ``toy_nobn``, which has GroupNorm where ``toy`` has batch norm."""

from __future__ import annotations

import torch
from torch import nn

from featpipe.backbones import Backbone, Preprocessing, register_backbone
from featpipe.backbones.registry import _BUILTINS


class ToyNet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        )
        self.stage1 = nn.Sequential(
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU()
        )
        self.stage2 = nn.Sequential(
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage2(self.stage1(self.stem(x)))
        return self.fc(self.pool(x).flatten(1))


def build_toy(spec) -> Backbone:
    torch.manual_seed(0 if spec.weights in (None, "none") else int(spec.weights))
    return Backbone(
        spec=str(spec),
        model=ToyNet(),
        preprocessing=Preprocessing(resize=36, crop=32),
        stages=["stem", "stage1", "stage2"],
    )


if "toy" not in _BUILTINS:
    register_backbone("toy")(build_toy)


class NormNet(nn.Module):
    """A toy CNN with GroupNorm only (as a ConvNeXt or ViT has LayerNorm): no batch norm."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.GroupNorm(2, 8))
        self.stage1 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.stage1(self.stem(x))).flatten(1))


def build_nobn(spec) -> Backbone:
    torch.manual_seed(0)
    return Backbone(
        spec=str(spec),
        model=NormNet(),
        preprocessing=Preprocessing(resize=36, crop=32),
        stages=["stem", "stage1"],
    )


if "toy_nobn" not in _BUILTINS:
    register_backbone("toy_nobn")(build_nobn)
