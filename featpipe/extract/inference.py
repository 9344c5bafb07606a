"""Run a model on images on a device: the one forward pass of featpipe.

Extraction, the Embedder, LP-FT's probe features and FineTuner predictions all run through
:class:`Inference`, so that they compute the same numbers in the same way: eval mode,
channels-last, ``torch.inference_mode()``, the autocast dtype of :func:`featpipe.device.amp_dtype`
(bf16 on GPUs with native bf16, fp16 on older GPUs, fp32 on the CPU) and, on CUDA, outputs
copied to pinned host memory without waiting for the device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from featpipe.backbones.base import Backbone, FeatureModel, input_dtype
from featpipe.device import amp_dtype
from featpipe.extract.fixed_batch import FixedBatch
from featpipe.extract.host_copy import PendingCopy, start_copy

PRECISIONS = {
    None: "fp32",
    torch.float32: "fp32",
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
    torch.float64: "fp64",
}


def precision(device: torch.device, dtype: torch.dtype = torch.float32) -> str:
    """The forward pass's precision on ``device`` as the store records it, for a model whose
    weights are ``dtype`` (:func:`~featpipe.backbones.base.input_dtype`): ``fp32`` on the CPU
    (exact and reproducible features), ``bf16`` or ``fp16`` autocast on CUDA. A model of
    another dtype computes in it on the CPU, and a float64 one on CUDA too (autocast leaves
    float64 alone)."""
    autocast = amp_dtype(device)
    return PRECISIONS[dtype if autocast is None or dtype == torch.float64 else autocast]


class Inference:
    """``model`` ready to run on ``device``; calling it runs a batch of images.

    The model is put in eval mode on ``device`` and in ``memory_format``, as are the images;
    the default, channels-last, pays on every device: convolutions run faster in that layout on
    CUDA under autocast and on the CPU too (oneDNN; measured 1.2-1.4x for ResNet-50 and
    EfficientNet-Lite0 on a 2-core CPU, see benchmarks/README.md); models without 4-D weights
    are unchanged by it. A FineTuner keeps the layout it trains in (``torch.preserve_format``
    on the CPU). ``compile`` runs the model through ``torch.compile``, always at
    ``batch_size`` rows when that is given (:class:`FixedBatch`: a short last batch would
    compile it again).
    """

    def __init__(
        self,
        model: nn.Module,
        device: torch.device | str,
        *,
        memory_format: torch.memory_format = torch.channels_last,
        compile: bool = False,
        batch_size: int | None = None,
    ):
        self.device = torch.device(device)
        self.memory_format = memory_format
        self.model = model.eval().to(self.device, memory_format=self.memory_format)
        # Images go in the model's own dtype (a float64 or bfloat16 user model), not float32.
        self._input_dtype = input_dtype(self.model)[1]
        self._autocast_dtype = amp_dtype(self.device)
        self._run = self.model
        self.compiled = compile
        if compile:
            compiled = torch.compile(self.model)
            self._run = FixedBatch(compiled, batch_size) if batch_size else compiled

    @classmethod
    def of_layers(
        cls, backbone: Backbone, layers: Sequence[str], device: torch.device | str, **options
    ) -> Inference:
        """The forward pass returning ``{layer name: (B, D) features}`` of ``backbone``;
        ``close()`` (or the ``with`` block) takes its hooks off the backbone's model."""
        return cls(backbone.features(layers), device, **options)

    def __call__(self, images: torch.Tensor, *, eager: bool = False) -> Any:
        """The model's output for a (B, 3, H, W) float batch, on the device and in the model's
        dtype. ``eager`` bypasses ``torch.compile`` (a one-off dummy batch must not trigger a
        compilation)."""
        run = self.model if eager else self._run
        with torch.inference_mode(), self._autocast():
            x = images.to(
                self.device,
                self._input_dtype,
                non_blocking=True,
                memory_format=self.memory_format,
            )
            return run(x)

    def _autocast(self) -> contextlib.AbstractContextManager:
        # amp_dtype is asked once, in __init__: it queries the GPU.
        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self._autocast_dtype)

    def to_host(
        self, outputs: Mapping[str, torch.Tensor], dtype: torch.dtype = torch.float32
    ) -> PendingCopy:
        """Start copying ``outputs`` to host memory as ``dtype``; on CUDA the copy is queued
        into pinned memory and this returns at once (``PendingCopy.arrays()`` waits)."""
        with torch.inference_mode():
            return start_copy(outputs, dtype)

    def arrays(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        """Float32 numpy outputs of a batch whose model returns ``{name: tensor}``."""
        return self.to_host(self(images)).arrays()

    def array(self, images: torch.Tensor) -> np.ndarray:
        """Float32 numpy output of a batch whose model returns one tensor (e.g. logits)."""
        return self.to_host({"out": self(images).float()}).arrays()["out"]

    def close(self) -> None:
        """Take a feature model's hooks off the backbone's model."""
        if isinstance(self.model, FeatureModel):
            self.model.remove()

    def __enter__(self) -> Inference:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
