"""Datasets for fine-tuning: the source's splits through the backbone's preprocessing."""

from __future__ import annotations

import functools
import math
import random
import signal
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2 as T

from featpipe.backbones import Preprocessing
from featpipe.backbones.preprocessing import INTERPOLATIONS
from featpipe.data.images import check_decode, load_resized, load_source_image
from featpipe.data.source import SPLIT_CODES, ImageSource
from featpipe.data.splits import stratified_split, why_carved_nothing
from featpipe.errors import ConfigError, SourceError
from featpipe.interrupt import forking, worker_ignores

AUGMENTATIONS = ("standard", "none")
# Milder than ImageNet's (0.08, 1): a few epochs on a small set cannot absorb tiny crops.
CROP_SCALE = (0.25, 1.0)


def train_transform(pre: Preprocessing, augment: str) -> Callable:
    """RandomResizedCrop + horizontal flip at the crop size, with the same normalisation."""
    if augment == "none":
        return pre.transform()
    if augment != "standard":
        raise ConfigError(f"Unknown augment {augment!r}. Valid: {', '.join(AUGMENTATIONS)}.")
    return T.Compose(
        [
            T.ToImage(),
            T.RandomResizedCrop(
                pre.crop,
                scale=CROP_SCALE,
                interpolation=INTERPOLATIONS[pre.interpolation],
                antialias=pre.antialias,
            ),
            T.RandomHorizontalFlip(),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(pre.mean, pre.std),
        ]
    )


def image_loader(
    pre: Preprocessing, decode: str = "exact", augment: str | None = None
) -> Callable[[ImageSource, int], object]:
    """How a dataset reads row ``index`` of a source: ``source.load`` for ``decode="exact"``;
    for ``fast``, JPEG files at the smallest DCT scale that still covers what the transform
    samples: the resize of evaluation (``augment`` None or "none"), or for the standard
    augmentation the smallest RandomResizedCrop box (CROP_SCALE of the area at 3:4)."""
    if check_decode(decode) == "exact":
        return _load
    if augment in (None, "none"):
        return functools.partial(
            load_resized, short_side=pre.resize, interpolation=pre.interpolation
        )
    smallest_side = math.sqrt(CROP_SCALE[0] * 3 / 4)  # of the image's short side, at worst
    return functools.partial(load_source_image, min_size=math.ceil(pre.crop / smallest_side))


def _load(source: ImageSource, index: int):
    return source.load(index)


class SourceDataset(Dataset):
    """Rows ``indices`` of ``source`` as (image tensor, label) pairs; ``load`` reads a row
    (see :func:`image_loader`).

    With ``seed`` (training), each image's transform draws from torch's RNG seeded by
    (seed, epoch, row), ``epoch`` set by :meth:`set_epoch`: the same augmentation whichever
    process, loader worker or rank transforms it, and again when a resumed run repeats an
    epoch."""

    def __init__(
        self,
        source: ImageSource,
        indices: np.ndarray,
        transform: Callable,
        load: Callable[[ImageSource, int], object] = _load,
        seed: int | None = None,
    ):
        self.source = source
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = np.asarray(source.labels, dtype=np.int64)[self.indices]
        self.transform = transform
        self.load = load
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next pass draws its augmentation for (set before iterating, so
        that loader workers, started by the pass, copy it)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        row = int(self.indices[i])
        image = self.load(self.source, row)
        if self.seed is None:
            return self.transform(image), int(self.labels[i])
        # Per-worker RNG streams would make the draws (and the weights) depend on the number
        # of workers; the caller's RNG state is left as it was.
        with torch.random.fork_rng(devices=[]):
            # The CPU generator the transforms draw from (torch.manual_seed would also seed
            # every device, ~100x slower per image).
            torch.default_generator.manual_seed(sample_seed(self.seed, self.epoch, row))
            return self.transform(image), int(self.labels[i])


def sample_seed(seed: int, epoch: int, row: int) -> int:
    """The torch seed of row ``row``'s augmentation in ``epoch``."""
    return int(np.random.SeedSequence([seed, epoch, row]).generate_state(1, np.uint64)[0] >> 1)


def split_rows(
    source: ImageSource, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Train and val row indices; with no val split, a stratified, seeded ``val_fraction`` of
    train, drawn in the order of the rows' ids, becomes val (the bool says so)."""
    train, val = source.indices("train"), source.indices("val")
    if len(train) == 0:
        raise SourceError(f"The source has no train split (splits: {source.split_counts()}).")
    if len(val):
        return train, val, False
    if not 0 < val_fraction < 1:
        raise ConfigError(
            f"The source has no val split, so val_fraction must be in (0, 1); got {val_fraction}."
        )
    labels, ids = np.asarray(source.labels)[train], [source.ids[r] for r in train]
    codes = stratified_split(labels, val_fraction=val_fraction, seed=seed, ids=ids)
    val = train[codes == SPLIT_CODES["val"]]
    if len(val) == 0:  # nothing to choose the epoch on
        n = len(train)
        why, fix = why_carved_nothing("val", n, val_fraction)
        raise ConfigError(
            f"The source has no val split, and val_fraction={val_fraction:g} of its {n} train "
            f"rows carves no val row ({why}). {fix}, or a source with a val split."
        )
    return train[codes == SPLIT_CODES["train"]], val, True


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; numpy and random follow it.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    # Ctrl-C reaches the whole process group: the main process stops training and shuts the
    # workers down, so they must not print a traceback of their own. (SIGTERM stays: it is
    # how a worker that does not stop in time is ended.)
    worker_ignores(signal.SIGINT)


class _Loader(DataLoader):
    """A DataLoader whose workers are forked with the stop signals held (see ``forking``)."""

    def __iter__(self):
        with forking():
            return super().__iter__()


def loader(
    dataset: Dataset,
    batch_size: int,
    workers: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    pin_memory: bool = False,
    sampler: Sampler | None = None,
) -> DataLoader:
    """Batches of ``dataset``; ``shuffle`` for training (a ``sampler``, e.g. a rank's share
    under DDP, then does the shuffling)."""
    rows = len(sampler) if sampler is not None else len(dataset)
    return _Loader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=workers,
        generator=generator,
        worker_init_fn=_seed_worker if workers else None,
        drop_last=shuffle and rows > batch_size,  # no size-1 batch through batch norm
        pin_memory=pin_memory,
    )
