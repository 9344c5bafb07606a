"""Run a compiled model at one batch size, so that the short last batch does not recompile it."""

from __future__ import annotations

import torch
from torch import nn


class FixedBatch(nn.Module):
    """``model`` always called with ``batch_size`` rows: a shorter batch is padded with zero
    images and the padding's outputs are dropped.

    ``torch.compile`` specialises on the batch size it first sees; the last chunk of a store
    is usually shorter, and would compile the model a second time (minutes on a large model)
    or, marked dynamic, make every batch run slower kernels. In eval mode every row's output
    depends on that row alone, so the padding changes nothing else.
    """

    def __init__(self, model: nn.Module, batch_size: int):
        super().__init__()
        self.model = model
        self.batch_size = batch_size

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        rows = x.shape[0]
        if rows >= self.batch_size:
            return self.model(x)
        return {name: t[:rows] for name, t in self.model(pad_rows(x, self.batch_size)).items()}


def pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """``x`` followed by zero rows up to ``rows`` rows, in ``x``'s memory format."""
    layout = (
        torch.channels_last
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
        else torch.contiguous_format
    )
    padded = torch.zeros((rows, *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded = padded.contiguous(memory_format=layout)
    padded[: x.shape[0]] = x
    return padded
