"""``torchvision:NAME@ROOT``: torchvision datasets already on disk, with their official splits."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from featpipe.data.arrays import ArraySource
from featpipe.data.source import row_ids
from featpipe.errors import SourceError, unknown_name

# Datasets whose torchvision class holds every image in ``data`` and takes ``train=True/False``.
TORCHVISION_DATASETS = ("CIFAR10", "CIFAR100", "FashionMNIST", "KMNIST", "MNIST")
SPLITS = ("train", "test")  # torchvision's official splits, in row order


class TorchvisionSource(ArraySource):
    """A torchvision dataset read from ``root`` with ``download=False``: its train and test sets
    become the train and test splits, and val is carved out of train by ``val_fraction`` (seeded
    and stratified, as for folders). Ids are ``train/00042`` and ``test/00042``, the row in
    torchvision's own split. Gray images (MNIST family) are converted to RGB like any image.
    """

    def __init__(
        self,
        name: str,
        root: str | Path,
        *,
        val_fraction: float = 0.0,
        test_fraction: float = 0.0,
        seed: int = 0,
    ):
        self.root = Path(root)
        self.dataset = canonical_name(name)
        parts = {split: _read(self.dataset, self.root, split == "train") for split in SPLITS}
        classes = parts["train"][2]
        images = np.concatenate([parts[s][0] for s in SPLITS])
        labels = np.concatenate([parts[s][1] for s in SPLITS])
        splits = np.concatenate([np.full(len(parts[s][1]), s) for s in SPLITS])
        ids = [sid for s in SPLITS for sid in row_ids(s, len(parts[s][1]))]
        super().__init__(
            images,
            labels,
            classes=classes,
            splits=splits,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            seed=seed,
            name=self.dataset,
            ids=ids,
        )
        self.val_fraction, self.test_fraction, self.seed = val_fraction, test_fraction, seed

    def describe(self) -> dict:
        return {
            "kind": type(self).__name__,
            "name": self.dataset,
            "root": str(self.root.resolve()),
            "images": len(self),
            "classes": len(self.classes),
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "seed": self.seed,
        }


def canonical_name(name: str) -> str:
    """torchvision's spelling of a supported dataset name (matched case-insensitively)."""
    by_lower = {n.lower(): n for n in TORCHVISION_DATASETS}
    if name.lower() in by_lower:
        return by_lower[name.lower()]
    hint = "Write torchvision:NAME@ROOT, e.g. torchvision:CIFAR10@/data/torchvision."
    raise unknown_name("torchvision dataset", name, TORCHVISION_DATASETS, hint=hint)


def expected_files(name: str) -> list[str]:
    """The files torchvision reads for dataset ``name``, relative to its root."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, name)
    if hasattr(cls, "train_list"):  # the CIFAR family: pickled batches and a meta file
        files = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        return [f"{cls.base_folder}/{f}" for f in files]
    # the MNIST family: the raw idx files, unpacked, under <root>/<ClassName>/raw
    return [f"{name}/raw/{os.path.splitext(os.path.basename(url))[0]}" for url, _ in cls.resources]


def _read(name: str, root: Path, train: bool) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(uint8 images, int64 labels, class names) of torchvision's train or test set."""
    import torchvision.datasets as tvd

    try:
        data = getattr(tvd, name)(str(root), train=train, download=False)
    except RuntimeError as err:  # torchvision's "Dataset not found or corrupted"
        raise _not_found(name, root) from err
    images = data.data.numpy() if hasattr(data.data, "numpy") else np.asarray(data.data)
    labels = np.asarray(data.targets, dtype=np.int64)
    return images.astype(np.uint8, copy=False), labels, [str(c) for c in data.classes]


def _not_found(name: str, root: Path) -> SourceError:
    expected = expected_files(name)
    missing = [f for f in expected if not (root / f).is_file()]
    if not root.is_dir():
        found = "does not exist"
    elif missing:
        found = f"lacks {len(missing)} of them ({', '.join(missing)})"
    else:  # every file is there, so torchvision's checksum failed
        found = "has them all, but torchvision found some corrupted (checksum mismatch)"
    return SourceError(
        f"torchvision dataset {name} is not in {str(root)!r}: torchvision expects "
        f"{', '.join(expected)} under that root, and it {found}. featpipe never downloads; "
        f"fetch it once with torchvision.datasets.{name}(root, download=True) where there is "
        "internet, or give the root that holds these files."
    )
