"""The pluggable decoding stage: how images get from a source to a normalised batch on a device.

A :class:`DataPath` splits the work in three: ``load`` and ``collate`` run in DataLoader
workers, ``to_batch`` runs in the main process and returns a normalised float (B, 3, H, W)
tensor on the device. The CPU path decodes with PIL and applies the preprocessing in the
workers; a GPU path (``featpipe.extract.gpu_path.GPUDataPath``) can ship encoded bytes and
decode on the device instead, without any change to the extraction loop.

An image that cannot be read takes a ``blank()`` place in its batch, so that batches keep their
shape (and the other rows their exact features); the extraction loop fails on it or records it
as skipped.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from featpipe.backbones.preprocessing import Preprocessing
from featpipe.data.source import ImageSource
from featpipe.errors import unknown_name

DATA_PATHS = ("auto", "cpu", "gpu")


@runtime_checkable
class DataPath(Protocol):
    name: str

    def load(self, source: ImageSource, index: int) -> Any:
        """One sample, ready to collate (runs in a DataLoader worker); raises ImageReadError
        for an image that cannot be read."""

    def blank(self) -> Any:
        """A sample standing in for one that could not be loaded (its features are dropped)."""

    def collate(self, items: list[Any]) -> Any:
        """One batch from loaded samples (runs in a DataLoader worker)."""

    def to_batch(
        self, batch: Any, device: torch.device, failed: dict | None = None
    ) -> torch.Tensor:
        """A normalised float (B, 3, H, W) tensor on ``device`` (runs in the main process).
        An image that cannot be decoded here raises ImageReadError, or, when ``failed`` is a
        dict, is recorded in it as ``{position in the batch: error}`` and left blank."""


class CPUDataPath:
    """PIL decode and ``preprocessing.transform()`` in the workers, then ``torch.stack``."""

    name = "cpu"

    def __init__(self, preprocessing: Preprocessing):
        self.preprocessing = preprocessing
        self.transform = preprocessing.transform()

    def load(self, source: ImageSource, index: int) -> torch.Tensor:
        return self.transform(source.load(index))

    def blank(self) -> torch.Tensor:
        return torch.zeros(3, self.preprocessing.crop, self.preprocessing.crop)

    def collate(self, items: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(items)

    def to_batch(
        self, batch: torch.Tensor, device: torch.device, failed: dict | None = None
    ) -> torch.Tensor:
        # Decoded in the workers: nothing can fail here. channels-last, as the model is (see
        # Inference); pinned memory makes this async
        return batch.to(device, non_blocking=True, memory_format=torch.channels_last)


def get_data_path(name: str, preprocessing: Preprocessing, device: torch.device) -> DataPath:
    """The data path called ``name``: ``cpu`` (decode and resize in the loader workers), ``gpu``
    (workers read bytes; decode and resize on ``device``, which may also be the CPU, where it
    gives the same pixels as ``cpu``) or ``auto`` (gpu on a CUDA device, else cpu)."""
    if name not in DATA_PATHS:
        raise unknown_name("data path", name, DATA_PATHS)
    if name == "auto":
        name = "gpu" if device.type == "cuda" else "cpu"
    if name == "cpu":
        return CPUDataPath(preprocessing)
    from featpipe.extract.gpu_path import GPUDataPath  # torchvision.io only when asked for

    return GPUDataPath(preprocessing, device)
