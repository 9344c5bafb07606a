"""The pluggable decoding stage: how images get from a source to a normalised batch on a device.

A :class:`DataPath` splits the work in three: ``load`` and ``collate`` run in DataLoader
workers, ``to_batch`` runs in the main process and returns a normalised float (B, 3, H, W)
tensor on the device. The CPU path decodes with PIL and applies the preprocessing in the
workers; a GPU path (``featpipe.extract.gpu_path.GPUDataPath``) can ship encoded bytes and
decode on the device instead, without any change to the extraction loop.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol, runtime_checkable

import torch

from featpipe.backbones.preprocessing import Preprocessing
from featpipe.data.source import ImageSource
from featpipe.errors import ConfigError, unknown_name

DATA_PATHS = ("auto", "cpu", "gpu")


@runtime_checkable
class DataPath(Protocol):
    name: str

    def load(self, source: ImageSource, index: int) -> Any:
        """One sample, ready to collate (runs in a DataLoader worker)."""

    def collate(self, items: list[Any]) -> Any:
        """One batch from loaded samples (runs in a DataLoader worker)."""

    def to_batch(self, batch: Any, device: torch.device) -> torch.Tensor:
        """A normalised float (B, 3, H, W) tensor on ``device`` (runs in the main process)."""


class CPUDataPath:
    """PIL decode and ``preprocessing.transform()`` in the workers, then ``torch.stack``."""

    name = "cpu"

    def __init__(self, preprocessing: Preprocessing):
        self.preprocessing = preprocessing
        self.transform = preprocessing.transform()

    def load(self, source: ImageSource, index: int) -> torch.Tensor:
        return self.transform(source.load(index))

    def collate(self, items: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(items)

    def to_batch(self, batch: torch.Tensor, device: torch.device) -> torch.Tensor:
        if device.type == "cuda":
            # channels-last suits convolutions under autocast; pinned memory makes this async
            return batch.to(device, non_blocking=True, memory_format=torch.channels_last)
        return batch.to(device)


def get_data_path(name: str, preprocessing: Preprocessing, device: torch.device) -> DataPath:
    """The data path called ``name``: ``cpu``, ``gpu`` (decode on the CUDA device) or ``auto``
    (gpu on a CUDA device, else cpu)."""
    if name not in DATA_PATHS:
        raise unknown_name("data path", name, DATA_PATHS)
    if name == "auto":
        name = "gpu" if device.type == "cuda" and _gpu_path_available() else "cpu"
    if name == "cpu":
        return CPUDataPath(preprocessing)
    if device.type != "cuda":
        raise ConfigError(
            f"The gpu data path decodes on a CUDA device, but the device is {device}. "
            "Use --data-path cpu (or auto), or --device cuda on a machine with a GPU."
        )
    module = importlib.import_module("featpipe.extract.gpu_path")
    return module.GPUDataPath(preprocessing, device)


def _gpu_path_available() -> bool:
    return importlib.util.find_spec("featpipe.extract.gpu_path") is not None
