"""``torchvision:NAME@ROOT``: torchvision datasets already on disk, with their official splits."""

from __future__ import annotations

import math
import os
import pickle
import struct
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
    # RuntimeError: torchvision's "Dataset not found or corrupted"; the others: a damaged file
    except (RuntimeError, ValueError, EOFError, OSError, pickle.UnpicklingError) as err:
        raise _cannot_read(name, root, train, err) from err
    images = data.data.numpy() if hasattr(data.data, "numpy") else np.asarray(data.data)
    labels = np.asarray(data.targets, dtype=np.int64)
    if len(images) != len(labels):
        # torchvision pairs them by position without a check: images and labels of two
        # downloads would shift rows into the other split, each with another image's label
        files = ", ".join(_split_files(name, expected_files(name), train))
        split = "train" if train else "test"
        raise SourceError(
            f"torchvision dataset {name} in {str(root)!r}: its {split} set has "
            f"{len(images)} images but {len(labels)} labels ({files}), so featpipe cannot tell "
            "which label is whose. The files come from different copies of the dataset: copy "
            "them again from one place, or download them again."
        )
    return images.astype(np.uint8, copy=False), labels, [str(c) for c in data.classes]


def _cannot_read(name: str, root: Path, train: bool, err: Exception) -> SourceError:
    expected = expected_files(name)
    missing = [f for f in expected if not (root / f).is_file()]
    fetch = (
        f"torchvision.datasets.{name}(root, download=True) where there is internet (featpipe "
        "never downloads)"
    )
    if root.is_dir() and not missing:  # every file is there: some are damaged
        read = _split_files(name, expected, train)
        damaged = [f for f in read if _looks_damaged(root / f)]
        if damaged:
            return SourceError(
                f"torchvision dataset {name} in {str(root)!r}: {', '.join(damaged)} "
                f"{'looks' if len(damaged) == 1 else 'look'} truncated or damaged "
                f"(torchvision: {str(err).strip() or type(err).__name__}). Copy it again from "
                f"where it came from, or download it again with {fetch}."
            )
        return SourceError(
            f"torchvision dataset {name} in {str(root)!r} has all the files torchvision expects "
            f"({', '.join(expected)}), but torchvision cannot read them "
            f"({str(err).strip() or type(err).__name__}): one of {', '.join(read)} is corrupted "
            f"(checksum mismatch) or damaged. Copy them again, or download them with {fetch}."
        )
    if root.is_dir():
        found = f"lacks {len(missing)} of them ({', '.join(missing)})"
    else:
        found = "is a file, not a folder" if root.exists() else "does not exist"
    # the root given is often the dataset's own folder or file (cifar-10-batches-py, MNIST/raw)
    above = next((r for r in root.parents[:3] if all((r / f).is_file() for f in expected)), None)
    fix = (
        f"They are under {str(above)!r}: give that folder, torchvision:{name}@{above}."
        if above
        else f"Fetch it once with {fetch}, or give the root that holds these files."
    )
    return SourceError(
        f"torchvision dataset {name} is not in {str(root)!r}: torchvision expects "
        f"{', '.join(expected)} under that root, and it {found}. {fix}"
    )


def _split_files(name: str, expected: list[str], train: bool) -> list[str]:
    """The files of ``expected`` that torchvision reads for the train or the test set."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, name)
    if hasattr(cls, "train_list"):
        batches = cls.train_list if train else cls.test_list
        names = {f for f, _ in batches} | {cls.meta["filename"]}
        return [f for f in expected if f.rsplit("/", 1)[-1] in names]
    prefix = "train" if train else "t10k"
    return [f for f in expected if f.rsplit("/", 1)[-1].startswith(prefix)]


def _looks_damaged(file: Path) -> bool:
    """Whether ``file`` is empty, an idx file (MNIST family) shorter or longer than its
    header says, or a pickle (CIFAR) that does not load."""
    try:
        data = file.read_bytes()
    except OSError:  # unreadable, not known to be damaged: torchvision's error says why
        return False
    if not data:
        return True
    if "/raw/" in file.as_posix():  # idx: magic (type, dims), then each dim's size
        if len(data) < 4:
            return True
        kind, dims = data[2], data[3]
        itemsize = {8: 1, 9: 1, 11: 2, 12: 4, 13: 4, 14: 8}.get(kind)
        if itemsize is None or len(data) < 4 + 4 * dims:
            return True
        sizes = struct.unpack(f">{dims}I", data[4 : 4 + 4 * dims])
        return len(data) != 4 + 4 * dims + itemsize * math.prod(sizes)
    try:
        pickle.loads(data, encoding="latin1")
    except Exception:  # any failure to unpickle means the file is damaged
        return True
    return False
