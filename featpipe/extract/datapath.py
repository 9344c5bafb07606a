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
from torchvision.transforms.v2 import functional as F

from featpipe.backbones.preprocessing import Preprocessing
from featpipe.data.images import check_decode, load_resized
from featpipe.data.source import ImageSource
from featpipe.errors import unknown_name
from featpipe.extract.tensor_ops import normalise

DATA_PATHS = ("auto", "cpu", "gpu")


@runtime_checkable
class DataPath(Protocol):
    name: str
    decode: str  # "exact", or "fast" where this path decodes JPEGs at reduced scale

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
    """PIL decode and ``preprocessing.transform()`` in the workers, then ``torch.stack``.
    ``decode="fast"``: JPEG files decode at the smallest DCT scale that still covers the
    resize (``featpipe.data.images.load_resized``)."""

    name = "cpu"

    def __init__(self, preprocessing: Preprocessing, decode: str = "exact", uint8: bool = False):
        self.preprocessing = preprocessing
        self.decode = check_decode(decode)
        # uint8: load ships resized uint8 pixels and to_batch normalises the batch on the
        # device. For a GPU: a quarter of the bytes through shared memory (float32 chunks from
        # many workers can fill a container's 64 MB /dev/shm) and of the copy to the device;
        # on a CPU, one op per batch instead of one per image (0.2-0.3 ms an image less).
        self.uint8 = uint8
        self.transform = preprocessing.geometry() if uint8 else preprocessing.transform()

    def load(self, source: ImageSource, index: int) -> torch.Tensor:
        if self.decode == "fast":  # a uint8 tensor, already resized: the transform crops
            pre = self.preprocessing
            return self.transform(load_resized(source, index, pre.resize, pre.interpolation))
        image = source.load(index)
        return self.transform(F.pil_to_tensor(image) if self.uint8 else image)

    def blank(self) -> torch.Tensor:
        dtype = torch.uint8 if self.uint8 else torch.float32
        return torch.zeros(3, self.preprocessing.crop, self.preprocessing.crop, dtype=dtype)

    def collate(self, items: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(items)

    def to_batch(
        self, batch: torch.Tensor, device: torch.device, failed: dict | None = None
    ) -> torch.Tensor:
        # Decoded in the workers: nothing can fail here. channels-last, as the model is (see
        # Inference); pinned memory makes this async
        batch = batch.to(device, non_blocking=True, memory_format=torch.channels_last)
        if not self.uint8:
            return batch
        with torch.autocast(device.type, enabled=False):  # the loop runs this under autocast
            return normalise(batch, self.preprocessing)


def get_data_path(
    name: str, preprocessing: Preprocessing, device: torch.device, decode: str = "exact"
) -> DataPath:
    """The data path called ``name``: ``cpu`` (decode and resize in the loader workers), ``gpu``
    (workers read bytes; decode and resize on ``device``, which may also be the CPU, where it
    gives the same pixels as ``cpu``) or ``auto`` (gpu on a CUDA device, else cpu).
    ``decode="fast"`` applies where Pillow decodes JPEGs (the cpu path); the gpu path
    decodes them at full size whatever it says (its ``decode`` stays ``exact``)."""
    if name not in DATA_PATHS:
        raise unknown_name("data path", name, DATA_PATHS)
    check_decode(decode)
    if name == "auto":
        name = "gpu" if device.type == "cuda" else "cpu"
    if name == "cpu":  # uint8 batches, normalised in to_batch: one op per batch, not per image
        return CPUDataPath(preprocessing, decode, uint8=True)
    from featpipe.extract.gpu_path import GPUDataPath  # torchvision.io only when asked for

    return GPUDataPath(preprocessing, device)
