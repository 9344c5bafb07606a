"""The extraction loop: chunks of images through the data path and the model into the store."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from featpipe.backbones.base import FeatureModel
from featpipe.data.source import ImageSource
from featpipe.data.unreadable import first_failure
from featpipe.device import amp_dtype, available_cores
from featpipe.errors import ImageReadError
from featpipe.extract.datapath import DataPath
from featpipe.extract.host_copy import start_copy
from featpipe.extract.writer_thread import BackgroundWriter
from featpipe.interrupt import Interrupted, forking, worker_ignores
from featpipe.store import StoreWriter


def default_workers(device: torch.device, data_path: str) -> int:
    """Loader workers when the user gives none: the GPU path's workers only read bytes, so a
    few suffice; decoding on the CPU for a GPU needs every core; on a CPU-only machine one
    worker per core (at most 4) keeps decoding ahead of the forward pass."""
    cores = available_cores()
    if device.type == "cuda" and data_path != "gpu":
        return cores
    return min(4, cores)


def precision(device: torch.device) -> str:
    """The forward pass's precision (``featpipe.device.amp_dtype``): bf16 autocast on CUDA,
    fp16 on GPUs without native bf16 (T4, V100); fp32 on CPU, which keeps CPU features exact
    and reproducible."""
    dtype = amp_dtype(device)
    return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[dtype]


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    dtype = amp_dtype(device)
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


def compute_identity(device: torch.device, data_path: str, decode: str = "exact") -> dict[str, str]:
    """How features are computed beyond the model's inputs (the store's ``compute``
    attribute, part of its key): ``precision`` (see :func:`precision`) and ``decode``, where
    the pixels come from. ``pil`` is Pillow's decode and resize: the cpu data path, and also
    the gpu data path on a CPU device, which gives the same pixels bit for bit (torchvision's
    CPU JPEG decoder is libjpeg-turbo, as Pillow's, and its uint8 resize kernels match).
    ``nvjpeg`` is the gpu data path on CUDA (nvJPEG decode, float32 resize). Features of
    CUDA and CPU extractions differ by percent, so they never share a store. An option that
    changes pixels later (e.g. a faster, inexact decode) adds its own entry, left out at its
    exact default so that existing keys stay valid: ``pil-fast`` is the cpu data path with
    ``decode="fast"`` (JPEGs decoded at reduced DCT scale)."""
    on_cuda = device.type == "cuda"
    pixels = "nvjpeg" if on_cuda and data_path == "gpu" else "pil"
    if decode == "fast" and data_path == "cpu":
        pixels = "pil-fast"
    return {"precision": precision(device), "decode": pixels}


def prepare_model(model: FeatureModel, device: torch.device) -> FeatureModel:
    """Eval mode, on ``device``, channels-last: convolutions run faster in that layout on
    CUDA under autocast and on CPU too (oneDNN; measured 1.2-1.4x for ResNet-50 and
    EfficientNet-Lite0 on a 2-core CPU, see benchmarks/README.md). Models without 4-D
    weights are unchanged by it."""
    return model.eval().to(device, memory_format=torch.channels_last)


def probe_layers(
    model: FeatureModel, crop: int, device: torch.device
) -> dict[str, tuple[int, str]]:
    """(dim, resolved pooling) of every layer, from one forward pass on a dummy image; the
    store's datasets must be allocated before the first real batch is written."""
    x = torch.zeros(1, 3, crop, crop, device=device)
    with torch.inference_mode(), autocast(device):
        out = model(x)
    return {name: (int(t.shape[1]), model.poolings[name]) for name, t in out.items()}


class ChunkDataset(Dataset):
    """Item ``i`` is ``(chunk index, collated batch, {position: ImageReadError})`` of the
    ``i``-th pending chunk: an image that cannot be read is blank in the batch, and its error
    goes to the main process, which fails or skips it (a worker's own exception would arrive
    wrapped in its traceback)."""

    def __init__(
        self, source: ImageSource, data_path: DataPath, chunks: Sequence[tuple[int, int, int]]
    ):
        self.source = source
        self.data_path = data_path
        self.chunks = list(chunks)  # (chunk index, first row, end row)

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int):
        index, start, stop = self.chunks[i]
        items, failed = [], {}
        for row in range(start, stop):
            try:
                items.append(self.data_path.load(self.source, row))
            except ImageReadError as err:
                failed[row - start] = err
                items.append(self.data_path.blank())
        return index, self.data_path.collate(items), failed


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)  # decoding workers must not compete with the forward pass
    # Ctrl-C reaches the whole process group and a scheduler may signal it too: the main
    # process stops the run and shuts the workers down, which must not print tracebacks.
    worker_ignores(signal.SIGINT, signal.SIGTERM)


def run_chunks(
    model: FeatureModel,
    source: ImageSource,
    data_path: DataPath,
    path: Path,
    device: torch.device,
    *,
    workers: int,
    progress: bool = True,
    on_error: str = "fail",
) -> dict:
    """Compute and write every chunk of the store at ``path`` not done yet, then mark it
    complete; returns the run's stats. The store's ``extraction`` attribute gets the cost
    summed over every run that built it. An image that cannot be read stops the run
    (``on_error="fail"``) or is recorded as skipped. On SIGINT/SIGTERM the chunks already
    computed are written and Interrupted says how many are done."""
    with StoreWriter.open(path) as writer:  # refuses at once when the disk cannot hold it
        pending = writer.pending_chunks()
        chunks = [(i, *writer.chunk_rows(i)) for i in pending]
        n_rows, n_chunks, dtype = writer.n_rows, writer.n_chunks, writer.dtype
    todo = sum(stop - start for _, start, stop in chunks)
    loader = DataLoader(
        ChunkDataset(source, data_path, chunks),
        batch_size=None,  # an item already is one chunk of rows
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=_worker_init if workers else None,
        prefetch_factor=2 if workers else None,
    )
    torch_dtype = getattr(torch, dtype)
    bar = tqdm(
        total=n_rows,
        initial=n_rows - todo,
        unit="img",
        desc=f"extract {path.name}",
        disable=not progress,
        dynamic_ncols=True,
    )
    images = 0
    background: BackgroundWriter | None = None
    start_time = time.perf_counter()
    # Start the workers before the file is opened: forked workers would otherwise inherit its
    # descriptor and HDF5 lock, and keep the store locked after an error.
    with forking():
        batches = iter(loader)
    try:
        with (
            StoreWriter.open(path) as writer,
            BackgroundWriter(
                lambda i, item: writer.write_chunk(i, item[0].arrays(), errors=item[1])
            ) as background,
            torch.inference_mode(),
            autocast(device),
        ):
            for index, batch, failed in batches:
                pixels = data_path.to_batch(batch, device, failed)
                if failed and on_error == "fail":
                    raise first_failure(failed)
                features = model(pixels)
                rows = next(iter(features.values())).shape[0]
                reasons = {pos: err.reason for pos, err in failed.items()}
                background.submit(index, (start_copy(features, torch_dtype), reasons))
                images += rows
                bar.update(rows)
            background.close()  # every chunk written before the store is marked complete
            stats = _stats(images, time.perf_counter() - start_time, background)
            run = {
                "device": str(device),
                "data_path": data_path.name,
                "workers": workers,
                "rows_per_chunk": writer.rows_per_chunk,
                "on_error": on_error,
                "skipped": writer.skipped_count(),
            }
            writer.finish(run)
            stats.update(resumed=len(pending) < n_chunks, **run)
    except KeyboardInterrupt as exc:  # the with blocks above wrote the chunks computed
        written = background.chunks_written if background is not None else 0
        done = n_chunks - len(pending) + written
        raise Interrupted.from_exception(exc).with_message(
            f"interrupted: {done} of {n_chunks} chunks done; run the same command to resume"
        ) from None
    finally:
        bar.close()
        # Stop the workers now, not when the iterator is collected: an error's traceback keeps
        # it alive, and workers left at exit get SIGTERM, which they ignore (_worker_init).
        getattr(batches, "_shutdown_workers", lambda: None)()
    return stats


def _stats(images: int, seconds: float, background: BackgroundWriter) -> dict:
    return {
        "images": images,
        "seconds": round(seconds, 3),
        "images_per_s": round(images / seconds, 1) if seconds > 0 else 0.0,
        "bytes_written": int(background.bytes_written),
        "computed_chunks": int(background.chunks_written),
        "reused": False,
    }
