"""Extraction from user models: a model whose weights are not float32, and user mistakes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from toy_backbone import ToyNet

from featpipe.backbones import Backbone, Preprocessing
from featpipe.backbones.weights import read_state_dict
from featpipe.data import ArraySource
from featpipe.errors import ConfigError
from featpipe.extract import extract


class _SeesDtype(ToyNet):
    """ToyNet that records the dtype of the images it is given."""

    seen: set[torch.dtype]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.add(x.dtype)
        return super().forward(x)


def _source() -> ArraySource:
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    return ArraySource(images, [0, 1] * 3, splits=["train"] * 6)


def _pooled(tmp_path, dtype: torch.dtype) -> tuple[np.ndarray, set[torch.dtype]]:
    torch.manual_seed(0)
    model = _SeesDtype().to(dtype)
    model.seen = set()
    bb = Backbone(spec="mynet", model=model, preprocessing=Preprocessing(resize=36, crop=32))
    store = extract(
        _source(), bb, ["pooled"], cache_dir=tmp_path / str(dtype), dtype="float32", progress=False
    )
    return store.arrays("pooled")[0], model.seen


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-5), (torch.bfloat16, 0.1)])
def test_a_model_of_another_dtype_than_float32_is_fed_its_own_dtype(tmp_path, dtype, atol):
    # It was a RuntimeError traceback, "Input type (float) and bias type (double) should be
    # the same", at the store's first probe pass: images went in as float32.
    features, seen = _pooled(tmp_path, dtype)
    assert seen == {dtype}
    reference, _ = _pooled(tmp_path, torch.float32)
    assert np.allclose(features, reference, atol=atol)


class _Gray(nn.Module):
    """A model for 1-channel images."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((2, 3)))


class _Sized(nn.Module):
    """A model for 64×64 images only (a Linear on the flattened pixels)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 64 * 64, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def _backbone(model: nn.Module) -> Backbone:
    return Backbone(spec="mynet", model=model, preprocessing=Preprocessing(resize=36, crop=32))


@pytest.mark.parametrize("model, words", [(_Gray, "to have 1 channels"), (_Sized, "mat1")])
def test_a_user_model_that_does_not_take_the_images_is_refused_in_one_line(tmp_path, model, words):
    # It was torch's RuntimeError traceback from the store's probe pass (and from
    # describe_layers): the size check ran only at an image size other than the model's own.
    bb = _backbone(model())
    with pytest.raises(ConfigError, match=rf"mynet does not run on 32×32 images \(.*{words}"):
        extract(_source(), bb, ["logits"], cache_dir=tmp_path, progress=False)
    with pytest.raises(ConfigError, match="3-channel images at the preprocessing's crop size"):
        bb.describe_layers()


class _Returns(ToyNet):
    def __init__(self, wrap):
        super().__init__()
        self.wrap = wrap

    def forward(self, x: torch.Tensor):
        return self.wrap(super().forward(x))


@pytest.mark.parametrize(
    "wrap, words",
    [
        (lambda y: (y, y), "is a tuple, not a tensor"),
        (lambda y: {"logits": y}, "is a dict, not a tensor"),
        (lambda y: y[:, 0], r"has shape \(1,\) for a batch of 1"),
    ],
)
def test_logits_of_a_model_that_returns_no_rows_of_features_are_refused_in_one_line(
    tmp_path, wrap, words
):
    # It was an AttributeError ('tuple' object has no attribute 'ndim') or IndexError traceback.
    bb = _backbone(_Returns(wrap))
    with pytest.raises(ConfigError, match=rf"The output \('logits'\) of mynet {words}"):
        extract(_source(), bb, ["logits"], cache_dir=tmp_path, progress=False)
    assert "logits" not in dict(bb.describe_layers())
    assert "pooled" in dict(bb.describe_layers())


def test_a_backbone_of_a_function_or_of_weights_without_values_is_refused_in_one_line():
    # AttributeError ('function' object has no attribute 'eval') and NotImplementedError
    # ('Cannot copy out of meta tensor') tracebacks before.
    with pytest.raises(ConfigError, match=r"model must be a torch nn\.Module; got function"):
        _backbone(lambda x: x)
    with pytest.raises(ConfigError, match="weights are on the meta device"):
        _backbone(ToyNet().to("meta"))


@pytest.mark.parametrize(
    "content, words",
    [
        (b"", r"the file is empty \(0 bytes\)"),
        (b"<!DOCTYPE html><html>", r"it is not a file torch\.save wrote \(it begins b'<!DOCTYPE"),
    ],
)
def test_a_weights_file_that_is_empty_or_not_torchs_says_so(tmp_path, content, words):
    # torch.load's own words were '' (EOFError) and '101' (KeyError) for these files, e.g. a
    # web page saved in place of the weights.
    path = tmp_path / "resnet.pth"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=rf"Could not read .*resnet\.pth.*: {words}"):
        read_state_dict(path)
