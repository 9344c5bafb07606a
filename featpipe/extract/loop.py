"""The extraction loop: chunks of images through the data path and the model into the store."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from featpipe.backbones.base import FEEDS, RUN_ERRORS, FeatureModel, does_not_run
from featpipe.data.source import ImageSource
from featpipe.data.unreadable import first_failure
from featpipe.device import available_cores
from featpipe.distributed.progress import progress_bar
from featpipe.errors import ConfigError, FeaturePipeError, ImageReadError, IncompleteStoreError
from featpipe.extract.datapath import DataPath
from featpipe.extract.host_copy import PendingCopy
from featpipe.extract.inference import Inference, precision
from featpipe.extract.lanes import lane_count, lanes_running
from featpipe.extract.writer_thread import BackgroundWriter
from featpipe.interrupt import Interrupted, dead_worker, forking, worker_ignores
from featpipe.store import StoreWriter
from featpipe.words import counted


def default_workers(device: torch.device, data_path: str) -> int:
    """Workers when the user gives none: the GPU path's workers only read bytes, so a few
    suffice; decoding on the CPU for a GPU needs every core; on a CPU device they are lanes
    (:mod:`featpipe.extract.lanes`), one per core up to 4, each computing on its share of
    the cores (fewer barriers to wait at than one pass on every core, and less memory than
    a batch in flight per core on a large machine)."""
    cores = available_cores()
    if device.type == "cuda" and data_path != "gpu":
        return cores
    return min(4, cores)


def compute_identity(
    device: torch.device,
    data_path: str,
    decode: str = "exact",
    dtype: torch.dtype = torch.float32,
) -> dict[str, str]:
    """How features are computed beyond the model's inputs (the store's ``compute``
    attribute, part of its key): ``precision`` (``fp32`` on CPU, the autocast dtype on CUDA,
    for a model whose weights are ``dtype``, see :func:`featpipe.extract.inference.precision`)
    and ``decode``, where the pixels come
    from. ``pil`` is Pillow's decode and resize: the cpu data path, and also the gpu data path
    on a CPU device, which gives the same pixels bit for bit (torchvision's CPU JPEG decoder is
    libjpeg-turbo, as Pillow's, and its uint8 resize kernels match). ``nvjpeg`` is the gpu
    data path on CUDA (nvJPEG decode, float32 resize). Features of CUDA and CPU extractions
    differ by percent, so they never share a store. An option that changes pixels adds its own
    value, left out at its exact default so that existing keys stay valid: ``pil-fast`` is the
    cpu data path with ``decode="fast"`` (JPEGs decoded at reduced DCT scale)."""
    on_cuda = device.type == "cuda"
    pixels = "nvjpeg" if on_cuda and data_path == "gpu" else "pil"
    if decode == "fast" and data_path == "cpu":
        pixels = "pil-fast"
    return {"precision": precision(device, dtype), "decode": pixels}


def compute_words(compute: dict) -> str:
    """A ``compute`` record in words, for messages: ``decode pil, precision fp32``."""
    return ", ".join(f"{k} {v}" for k, v in sorted(compute.items()))


def probe_layers(
    model: FeatureModel, crop: int, device: torch.device
) -> dict[str, tuple[int, str]]:
    """(dim, resolved pooling) of every layer, from one forward pass on a dummy image; the
    store's datasets must be allocated before the first real batch is written."""
    try:
        out = Inference(model, device)(torch.zeros(1, 3, crop, crop), eager=True)
    except (torch.OutOfMemoryError, FeaturePipeError):  # not the model's input / said already
        raise
    except RUN_ERRORS as exc:  # at its own size: a user model fed what it does not take
        raise does_not_run(model.backbone.spec, crop, exc, FEEDS) from exc
    return {name: (int(t.shape[1]), model.poolings[name]) for name, t in out.items()}


class Piece(NamedTuple):
    """Rows ``[start, stop)`` of the store, one forward batch of chunk ``chunk``, starting at
    ``offset`` in the chunk; ``last`` says the chunk is complete with it."""

    chunk: int
    start: int
    stop: int
    offset: int
    last: bool


def cut_pieces(chunks: Sequence[tuple[int, int, int]], batch_size: int) -> list[Piece]:
    """The forward batches of ``(chunk index, first row, end row)`` chunks: a chunk is cut
    into batches of ``batch_size`` rows (a batch never spans two chunks)."""
    pieces = []
    for index, start, stop in chunks:
        for first in range(start, stop, batch_size):
            end = min(stop, first + batch_size)
            pieces.append(Piece(index, first, end, first - start, end == stop))
    return pieces


class PieceDataset(Dataset):
    """Item ``i`` is ``(piece, collated batch, {position in the chunk: ImageReadError})`` of
    the ``i``-th piece: an image that cannot be read is blank in the batch, and its error goes
    to the main process, which fails or skips it (a worker's own exception would arrive
    wrapped in its traceback)."""

    def __init__(
        self,
        source: ImageSource,
        data_path: DataPath,
        pieces: Sequence[Piece],
        row_offset: int = 0,
    ):
        self.source = source
        self.data_path = data_path
        self.pieces = list(pieces)
        self.row_offset = row_offset  # store row r is source row row_offset + r (a part)

    def __len__(self) -> int:
        return len(self.pieces)

    def __getitem__(self, i: int):
        piece = self.pieces[i]
        items, failed = [], {}
        for row in range(piece.start, piece.stop):
            try:
                items.append(self.data_path.load(self.source, self.row_offset + row))
            except ImageReadError as err:
                failed[row - piece.start] = err
                items.append(self.data_path.blank())
            except StopIteration as err:  # would end the DataLoader silently, rows unread
                raise RuntimeError(f"reading row {row} raised StopIteration") from err
        return piece, self.data_path.collate(items), failed


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)  # decoding workers must not compete with the forward pass
    # Ctrl-C reaches the whole process group and a scheduler may signal it too: the main
    # process stops the run and shuts the workers down, which must not print tracebacks.
    worker_ignores(signal.SIGINT, signal.SIGTERM)


class _Chunk:
    """The pieces of one chunk computed so far: their host copies and skipped rows."""

    def __init__(self) -> None:
        self.copies: list[PendingCopy] = []
        self.reasons: dict[int, str] = {}

    def add(self, piece: Piece, copy: PendingCopy, failed: dict) -> None:
        self.copies.append(copy)
        self.reasons.update({piece.offset + pos: err.reason for pos, err in failed.items()})

    def arrays(self) -> dict[str, np.ndarray]:
        """Every layer's rows of the chunk (waits for the copies; runs on the writer thread)."""
        return _joined([c.arrays() for c in self.copies])

    def peaks(self) -> dict[str, np.ndarray]:
        """Each row's largest |value| before the cast to float16, per layer (after arrays)."""
        return _joined([c.peak_arrays() for c in self.copies])

    def write(self, writer: StoreWriter, index: int, on_error: str) -> int:
        """Write the chunk; under on_error="skip", rows whose features are not finite are
        recorded as skipped, as unreadable images are."""
        return writer.write_chunk(
            index,
            self.arrays(),
            errors=self.reasons,
            peaks=self.peaks(),
            skip_non_finite=on_error == "skip",
        )


def _joined(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def run_chunks(
    inference: Inference,
    source: ImageSource,
    data_path: DataPath,
    path: Path,
    *,
    batch_size: int,
    chunks: Sequence[int] | None = None,
    workers: int,
    progress: bool = True,
    on_error: str = "fail",
    row_offset: int = 0,
    bar=None,
    filled_by: str | None = None,
) -> dict:
    """Compute and write the chunks ``chunks`` of the store at ``path`` (None: every chunk
    not done yet; chunks already done are not computed again) in forward batches of at most
    ``batch_size`` rows, then mark the store complete if every chunk is done; returns the
    run's stats. A part of a parted store passes its ``row_offset`` (its row r is source row
    ``row_offset + r``), the caller's progress ``bar`` (left open) and who fills it
    (``filled_by``, recorded in its ``extraction`` attribute). The store's ``extraction``
    attribute gets the cost summed over every run that built it. An image that cannot be
    read, or whose features are NaN or infinite, stops the run (``on_error="fail"``) or is
    recorded as skipped. On SIGINT/SIGTERM the
    chunks already computed are written and Interrupted says how many are done."""
    with StoreWriter.open(path) as writer:  # refuses at once when the disk cannot hold it
        pending = writer.pending_chunks()
        dtype = getattr(torch, writer.dtype)
        todo = pending if chunks is None else _selected(chunks, pending, writer.n_chunks)
        bounds = {i: writer.chunk_rows(i) for i in pending}
        n_rows, n_chunks = writer.n_rows, writer.n_chunks
        skipped_before = writer.skipped_count()
    pieces = cut_pieces([(i, *bounds[i]) for i in todo], batch_size)
    done_rows = n_rows - sum(stop - start for start, stop in bounds.values())
    own_bar = bar is None
    if own_bar:
        bar = _progress_bar(path, n_rows, done_rows, progress)
    dataset = PieceDataset(source, data_path, pieces, row_offset)
    background: BackgroundWriter | None = None
    start_time = time.perf_counter()
    # Start any loader workers before the file is opened: forked workers would otherwise
    # inherit its descriptor and HDF5 lock, and keep the store locked after an error.
    lanes = lane_count(inference.device, workers, inference.compiled)
    computed, stop = _start(dataset, inference, data_path, workers, lanes, dtype)
    interrupted = False
    try:
        with (
            StoreWriter.open(path) as writer,
            BackgroundWriter(
                lambda i, chunk: chunk.write(writer, i, on_error), idle=writer.commit
            ) as background,
        ):
            images = _compute(computed, len(dataset), background, bar, on_error)
            background.close()  # every chunk written before the store is marked complete
            stats = _stats(images, time.perf_counter() - start_time, background)
            run = _finish(
                writer, inference.device, data_path.name, workers, lanes, on_error, filled_by
            )
            stats.update(resumed=len(pending) < n_chunks, **run)
            # of this call's images: "skipped" counts every done chunk's, resumed ones too
            stats["skipped_now"] = run["skipped"] - skipped_before
    except KeyboardInterrupt as exc:  # the with blocks above wrote the chunks computed
        interrupted = True
        done = _chunks_done(n_chunks, pending, background)
        raise Interrupted.from_exception(exc).with_message(
            f"interrupted: {done} of {n_chunks} chunks done; run the same command to resume"
        ) from None
    except (RuntimeError, ConnectionResetError, EOFError) as exc:
        what = dead_worker(exc, loader_workers=workers > 0 and lanes == 0)
        if what is None:
            raise
        done = _chunks_done(n_chunks, pending, background)
        raise worker_died(what, done, n_chunks, path) from exc
    finally:
        if own_bar:
            bar.close()
        # stop() waits for the batches being computed: a second Ctrl-C meanwhile must not
        # replace the message saying how many chunks are done and how to resume.
        with contextlib.suppress(KeyboardInterrupt) if interrupted else contextlib.nullcontext():
            stop()
    return stats


def worker_died(what: str, done: int, n_chunks: int, path: Path) -> IncompleteStoreError:
    """The error of an extraction whose decoding worker died, naming the settings that use
    less memory in both callers' words (featpipe.cli.as_flags shows the flags alone)."""
    return IncompleteStoreError(
        f"{what}. A decoding worker died (the system kills one that runs out of memory); "
        f"{done} of {n_chunks} chunks of {path.name} are done. Run the same command to "
        "resume, with fewer workers (CLI: --workers) or a smaller batch_size "
        "(CLI: --batch-size) if memory ran out."
    )


def _chunks_done(n_chunks: int, pending: list[int], background: BackgroundWriter | None) -> int:
    """Chunks done when a run stops: those done before it and those it wrote."""
    return n_chunks - len(pending) + (background.chunks_written if background is not None else 0)


def _progress_bar(path: Path, n_rows: int, done_rows: int, shown: bool):
    return progress_bar(
        n_rows, initial=done_rows, unit="img", desc=f"extract {path.name}", enabled=shown
    )


def _finish(
    writer: StoreWriter,
    device: torch.device,
    data_path: str,
    workers: int,
    lanes: int,
    on_error: str,
    filled_by: str | None = None,
) -> dict:
    """Mark the store complete if every chunk is done; returns what the run was (``lanes``:
    how many lanes decoded and computed, 0 where loader workers decoded)."""
    run = {
        "device": str(device),
        "data_path": data_path,
        "workers": workers,
        "lanes": lanes,
        "rows_per_chunk": writer.rows_per_chunk,
        "on_error": on_error,
        "skipped": writer.skipped_count(),
    }
    if filled_by:
        run["filled_by"] = filled_by
    if not writer.pending_chunks():
        writer.finish(run)
    return run


def check_chunks(chunks: Sequence[int], n_chunks: int) -> None:
    """Raise ConfigError for an index that is not a chunk of a store of ``n_chunks``."""
    wrong = [i for i in chunks if not (isinstance(i, (int, np.integer)) and 0 <= i < n_chunks)]
    if wrong:
        raise ConfigError(
            f"Chunk indices must be integers in [0, {n_chunks}): the store has "
            f"{counted(n_chunks, 'chunk')} (its rows over chunk_rows, rounded up); got {wrong}. "
            f"Pass indices below {n_chunks}; a new store planned with a smaller chunk_rows has "
            "more chunks."
        )


def _selected(chunks: Sequence[int], pending: list[int], n_chunks: int) -> list[int]:
    """The asked-for chunks that are not done yet, in store order; raises for an index
    outside the store."""
    check_chunks(chunks, n_chunks)
    asked = {int(i) for i in chunks}
    return [i for i in pending if i in asked]


def _loader(dataset: PieceDataset, workers: int, device: torch.device) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=None,  # an item already is one forward batch
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=_worker_init if workers else None,
        prefetch_factor=2 if workers else None,
    )


def _start(
    dataset: PieceDataset,
    inference: Inference,
    data_path: DataPath,
    workers: int,
    lanes: int,
    dtype: torch.dtype,
) -> tuple[Iterable[tuple[Piece, PendingCopy, dict]], Callable[[], None]]:
    """The pieces of ``dataset`` computed in order, as ``(piece, host copy of its features,
    {position: ImageReadError})``, and the call that stops computing them: in ``lanes`` lanes
    that decode and compute (:mod:`featpipe.extract.lanes`), or with none, a DataLoader whose
    ``workers`` processes decode beside the forward pass in this thread."""

    def compute(item: tuple[Piece, Any, dict]) -> tuple[Piece, PendingCopy, dict]:
        piece, batch, failed = item
        features = inference(data_path.to_batch(batch, inference.device, failed))
        return piece, inference.to_host(features, dtype), failed

    if lanes:
        stack = contextlib.ExitStack()  # stop() closes the lanes
        running = stack.enter_context(
            lanes_running(lambda i: compute(dataset[i]), len(dataset), lanes)
        )
        return running, stack.close
    loader = _loader(dataset, workers, inference.device)
    with forking():
        batches = iter(loader)
    # Stop the workers when asked, not when the iterator is collected: an error's traceback
    # keeps it alive, and workers left at exit get SIGTERM, which they ignore (_worker_init).
    return map(compute, batches), getattr(batches, "_shutdown_workers", lambda: None)


def _compute(
    computed: Iterable[tuple[Piece, PendingCopy, dict]],
    n_pieces: int,
    background: BackgroundWriter,
    bar,
    on_error: str,
) -> int:
    """Hand each finished chunk of the ``n_pieces`` computed pieces to the writer thread;
    returns the number of images computed."""
    images, chunk, seen = 0, _Chunk(), 0
    for piece, copy, failed in computed:
        seen += 1
        if failed and on_error == "fail":
            raise first_failure(failed)
        chunk.add(piece, copy, failed)
        if piece.last:
            background.submit(piece.chunk, chunk)
            chunk = _Chunk()
        images += piece.stop - piece.start
        bar.update(piece.stop - piece.start)
    if seen < n_pieces:  # the chunks written are kept: the same call resumes after a fix
        raise RuntimeError(
            f"the data loader ended after {seen} of {n_pieces} batches without an error; "
            "the store is left incomplete"
        )
    return images


def _stats(images: int, seconds: float, background: BackgroundWriter) -> dict:
    return {
        "images": images,
        "seconds": round(seconds, 3),
        "images_per_s": round(images / seconds, 1) if seconds > 0 else 0.0,
        "bytes_written": int(background.bytes_written),
        "computed_chunks": int(background.chunks_written),
        "reused": False,
    }
