"""A state-dict file of a model with extra state loads.

A module's ``get_extra_state`` is saved in its state dict under ``<prefix>_extra_state``, and
may be any object, not a tensor. Loading such a file (``timm:<name>@/path/to/file.pt``) was
refused as "not a state dict of tensors", and past that the strict load and the check for a
classifier of other classes read ``.shape`` of every value (AttributeError). Shapes are now
compared for tensors only, and the extra state is loaded with the weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from featpipe.backbones import get_backbone
from featpipe.errors import ConfigError

timm = pytest.importorskip("timm")

NAME = "featpipe_extra_state_net"


class ExtraStateNet(nn.Module):
    """A tiny CNN whose output scale is extra state (a dict, no tensor), as quantised or
    calibrated modules keep theirs."""

    def __init__(self, num_classes: int = 10, **kwargs):
        super().__init__()
        self.num_classes = num_classes
        self.conv = nn.Conv2d(3, 4, 3)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, num_classes)
        self.scale = 1.0

    def get_extra_state(self) -> dict:
        return {"scale": self.scale}

    def set_extra_state(self, state: dict) -> None:
        self.scale = state["scale"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.conv(x)).flatten(1)) * self.scale


if not timm.is_model(NAME):

    @timm.models.register_model
    def featpipe_extra_state_net(pretrained: bool = False, **kwargs) -> nn.Module:
        return ExtraStateNet(**kwargs)


def _saved(tmp_path, num_classes: int = 10) -> tuple[ExtraStateNet, str]:
    torch.manual_seed(1)
    model = ExtraStateNet(num_classes)
    model.scale = 2.5
    path = tmp_path / "net.pt"
    torch.save(model.state_dict(), path)
    return model, str(path)


@pytest.mark.parametrize("num_classes", [10, 3])  # 3: a fine-tuned classifier
def test_a_state_dict_file_with_extra_state_loads_with_its_extra_state(tmp_path, num_classes):
    saved, path = _saved(tmp_path, num_classes)
    # Before: ConfigError "holds a OrderedDict, not a state dict of tensors"
    model = get_backbone(f"timm:{NAME}@{path}").model
    assert model.scale == 2.5  # the file's, not the architecture's 1.0
    assert model.fc.out_features == num_classes
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), saved.eval()(x))


def test_a_file_of_other_shapes_with_extra_state_is_refused_naming_the_shapes(tmp_path):
    model = ExtraStateNet()
    model.conv = nn.Conv2d(3, 4, 5)
    path = tmp_path / "other.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(ConfigError, match=r"conv.weight \(4, 3, 5, 5\) != \(4, 3, 3, 3\)"):
        get_backbone(f"timm:{NAME}@{path}")
