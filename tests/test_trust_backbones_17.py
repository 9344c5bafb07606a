"""Extraction from user models: a model whose weights are not float32, and user mistakes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from toy_backbone import ToyNet

from featpipe.backbones import Backbone, Preprocessing
from featpipe.data import ArraySource
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
