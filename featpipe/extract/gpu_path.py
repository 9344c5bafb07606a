"""The GPU data path: workers ship encoded JPEG bytes, the device decodes and preprocesses.

Workers only read files, so a few of them keep a fast GPU fed; ``to_batch`` decodes the whole
batch with nvJPEG (``torchvision.io.decode_jpeg(list, device="cuda")``), resizes and crops each
group of same-sized images on the device, and normalises the batch in one op. Anything that is
not a JPEG file (PNG, in-memory arrays, ...), and any JPEG whose header says nvJPEG may decode
it wrongly without an error (progressive, CMYK, 12-bit, truncated: ``jpeg_header``), is decoded
and cropped on CPU in the worker, exactly as the CPU path does, and joins the batch as uint8
pixels.

On CUDA the batch is decoded and preprocessed on a stream of its own, so that it overlaps the
previous batch's forward pass; the forward pass's stream waits for it (``wait_stream``) and
the allocator is told which stream uses the result (``record_stream``).

On a CPU device the same code decodes with torchvision on CPU (libjpeg-turbo, like Pillow) and
resizes with torch's uint8 kernels: the CPU path's pixels exactly. That is how it is tested here.
On CUDA two things differ from the CPU path, bounded by the constants below: nvJPEG's IDCT and
chroma upsampling are not libjpeg-turbo's, and resizing runs in float32.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as F

from featpipe.backbones.preprocessing import Preprocessing
from featpipe.data.images import check_header, decode_rgb
from featpipe.data.source import ImageSource
from featpipe.errors import ImageReadError
from featpipe.extract.jpeg_header import nvjpeg_safe
from featpipe.extract.tensor_ops import normalise, place_rows, resize_crop

JPEG_MAGIC = b"\xff\xd8\xff"

# Agreement with the CPU path (``Preprocessing.transform()`` on the PIL image), in uint8 grey
# levels; in normalised units a level is 1 / (255 * std). Measured on china.jpg, flower.jpg and
# CIFAR-10 upscaled to 500x375 (benchmarks/README.md):
CPU_DEVICE_MAX_LEVELS = 0  # device cpu: same decoder and resize kernels, bit-identical
FLOAT_RESIZE_MAX_LEVELS = 2  # the float32 resize used on CUDA; measured 1-2 (0.3 % of pixels)
NVJPEG_MEAN_LEVELS = 2.0  # nvJPEG vs libjpeg-turbo: torchvision's test bound (not measured here)
# efficientnet_lite0 pooled features through the float32 resize: measured cosine >= 0.99992.
FEATURE_MIN_COSINE = 0.999


class Sample(NamedTuple):
    """One loaded image: the encoded JPEG file, or its cropped uint8 (3, crop, crop) pixels
    when it is not a JPEG file; ``name`` (path or id) is for error messages."""

    data: bytes | torch.Tensor
    name: str


class Batch(NamedTuple):
    """One batch as it leaves a worker: two tensors, whatever the batch size, because every
    tensor sent from a worker costs a shared-memory segment and every one pinned a copy."""

    jpegs: torch.Tensor  # the batch's JPEG files end to end (1-D uint8)
    jpeg_sizes: list[int]
    jpeg_rows: list[int]  # their positions in the batch
    pixels: torch.Tensor  # (k, 3, crop, crop) uint8, the images decoded in the worker
    pixel_rows: list[int]
    names: list[str]


def is_jpeg(data: bytes) -> bool:
    """Whether ``data`` starts with the JPEG start-of-image marker."""
    return data[:3] == JPEG_MAGIC


class GPUDataPath:
    """Decode JPEGs on ``device`` (nvJPEG on CUDA, torchvision on CPU), then resize, crop and
    normalise there; other images are decoded in the workers."""

    name = "gpu"
    decode = "exact"  # nvJPEG decodes at full size

    def __init__(self, preprocessing: Preprocessing, device: torch.device | str):
        self.preprocessing = preprocessing
        self.device = torch.device(device)
        self.geometry = preprocessing.geometry()
        self._stream: torch.cuda.Stream | None = None  # made on first use, in the main process

    def load(self, source: ImageSource, index: int) -> Sample:
        name = source.path(index) or source.ids[index]
        raw = source.read_bytes(index)
        if raw is not None and is_jpeg(raw) and nvjpeg_safe(raw):
            check_header(raw, name)  # refuse what the CPU path refuses before decoding (size)
            return Sample(raw, name)
        # Worth the worker's time: a cropped image is far smaller to ship than a full one,
        # and the CPU kernels give the CPU path's pixels exactly.
        pixels = F.pil_to_tensor(source.load(index))
        return Sample(self.geometry(pixels).contiguous(), name)

    def blank(self) -> Sample:
        crop = self.preprocessing.crop
        return Sample(torch.zeros((3, crop, crop), dtype=torch.uint8), "")

    def collate(self, items: list[Sample]) -> Batch:
        jpeg_rows = [i for i, s in enumerate(items) if isinstance(s.data, bytes)]
        pixel_rows = [i for i, s in enumerate(items) if not isinstance(s.data, bytes)]
        joined = np.frombuffer(b"".join(items[i].data for i in jpeg_rows), dtype=np.uint8)
        jpegs = torch.from_numpy(joined.copy())  # a writable copy; torch warns on read-only
        crop = self.preprocessing.crop
        pixels = torch.empty((0, 3, crop, crop), dtype=torch.uint8)
        if pixel_rows:
            pixels = torch.stack([items[i].data for i in pixel_rows])
        return Batch(
            jpegs=jpegs,
            jpeg_sizes=[len(items[i].data) for i in jpeg_rows],
            jpeg_rows=jpeg_rows,
            pixels=pixels,
            pixel_rows=pixel_rows,
            names=[s.name for s in items],
        )

    def to_batch(
        self, batch: Batch, device: torch.device, failed: dict | None = None
    ) -> torch.Tensor:
        """Normalised float32 (B, 3, crop, crop) on ``device``, in the batch's order
        (channels-last, the layout of the model, see ``inference.Inference``). A JPEG that
        cannot be decoded raises ImageReadError, or, when ``failed`` is a dict, is recorded
        there by its position in the batch and left blank."""
        # Whatever autocast a caller holds, preprocessing must stay in float32.
        with torch.autocast(device.type, enabled=False):
            if device.type != "cuda":
                return self._to_batch(batch, device, failed)
            compute = torch.cuda.current_stream(device)
            stream = self._decode_stream(device)
            with torch.cuda.stream(stream):
                out = self._to_batch(batch, device, failed)
            compute.wait_stream(stream)  # the forward pass starts once the batch is ready
            out.record_stream(compute)  # and its memory is not reused before it has run
            return out

    def _decode_stream(self, device: torch.device) -> torch.cuda.Stream:
        """The stream this path decodes on, drained of its previous batch's work.

        nvJPEG decodes on a stream of its own into tensors allocated on the current stream
        (pytorch/vision#9606): memory the allocator hands out there must not be read by
        kernels still queued on that stream. Draining only this stream, whose last work is
        the previous batch's resize, keeps that true without waiting for the forward pass.
        """
        if self._stream is None:
            self._stream = torch.cuda.Stream(device)
        self._stream.synchronize()
        return self._stream

    def _to_batch(self, batch: Batch, device: torch.device, failed: dict | None) -> torch.Tensor:
        crop = self.preprocessing.crop
        parts, order = [], []
        if batch.jpeg_rows:
            files = list(torch.split(batch.jpegs, batch.jpeg_sizes))
            names = [batch.names[i] for i in batch.jpeg_rows]
            images = self._decode(files, names, device)
            for i, image in enumerate(images):
                if isinstance(image, ImageReadError):
                    if failed is None:
                        raise image
                    failed[batch.jpeg_rows[i]] = image
                    images[i] = torch.zeros((3, crop, crop), dtype=torch.uint8, device=device)
            parts.append(resize_crop(images, self.preprocessing))
            order += batch.jpeg_rows
        if batch.pixel_rows:
            # asynchronous when the DataLoader pinned the batch (pin_memory=True on CUDA)
            parts.append(batch.pixels.to(device, non_blocking=True))
            order += batch.pixel_rows
        pixels = place_rows(torch.cat(parts), order)
        pixels = pixels.contiguous(memory_format=torch.channels_last)
        return normalise(pixels, self.preprocessing)

    def _decode(
        self, files: list[torch.Tensor], names: list[str], device: torch.device
    ) -> list[torch.Tensor | ImageReadError]:
        """uint8 (3, H, W) RGB images on ``device``, or the error of each file that cannot be
        decoded; one batched call, per image on failure."""
        try:
            return _decode_jpegs(files, device)
        except RuntimeError:
            # A batched decode fails as a whole (e.g. one corrupt file, which nvJPEG
            # rejects): retry one by one so that only the bad image takes the slow road.
            return [_decode_one(f, name, device) for f, name in zip(files, names, strict=True)]


def _decode_one(
    file: torch.Tensor, name: str, device: torch.device
) -> torch.Tensor | ImageReadError:
    try:
        return _decode_jpegs([file], device)[0]
    except RuntimeError:
        pass
    try:  # Pillow decodes more variants (CMYK, some damaged files) than nvJPEG
        image = decode_rgb(file.numpy().tobytes(), name)
    except ImageReadError as err:  # returned, not raised: the caller fails or skips the row
        return err
    return F.pil_to_tensor(image).to(device)


def _decode_jpegs(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its decoders in favour of TorchCodec; they still work.
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
