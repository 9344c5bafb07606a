"""Tiny datasets written in the on-disk formats of torchvision and Hugging Face ``datasets``.

Nothing is downloaded: each writer lays out a handful of seeded random images exactly as the
library stores its real dataset (CIFAR pickled batches, MNIST idx files, ``save_to_disk``
folders, parquet). Each returns the uint8 pixels it wrote, per split, in row order.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat"]
HF_CLASSES = ["cat", "dog", "fox"]


def _pixels(n: int, shape: tuple[int, ...], labels: np.ndarray, seed: int) -> np.ndarray:
    """Seeded noise around a grey level per class, so that classes differ."""
    rng = np.random.default_rng(seed)
    base = (40 + 60 * labels).reshape(-1, *([1] * len(shape)))
    return (base + rng.integers(0, 50, (n, *shape))).astype(np.uint8)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_cifar(root: Path, monkeypatch, *, hundred: bool = False, bump: int = 0) -> dict:
    """CIFAR-10 (5 train batches of 4 images, a test batch of 6) or CIFAR-100 (train 20, test 6)
    as torchvision's pickles under ``root``. torchvision checks the real files' md5 sums, so
    the class's checksums are patched to those of the files written here. ``bump`` changes
    one pixel of train image 0 by that much."""
    import torchvision.datasets as tvd

    cls = tvd.CIFAR100 if hundred else tvd.CIFAR10
    folder = root / cls.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    n_train, n_test = 20, 6
    labels = {"train": np.arange(n_train) % 4, "test": np.arange(n_test) % 4}
    images = {s: _pixels(len(y), (32, 32, 3), y, seed=i) for i, (s, y) in enumerate(labels.items())}
    images["train"][0, 0, 0, 0] += bump
    key = "fine_labels" if hundred else "labels"
    batches = {name: ("train", slice(None)) for name, _ in cls.train_list}
    if not hundred:
        batches = {
            name: ("train", slice(4 * i, 4 * i + 4)) for i, (name, _) in enumerate(cls.train_list)
        }
    batches.update({name: ("test", slice(None)) for name, _ in cls.test_list})
    for name, (split, rows) in batches.items():
        data = images[split][rows].transpose(0, 3, 1, 2).reshape(-1, 3072)
        entry = {"data": data, key: [int(v) for v in labels[split][rows]]}
        (folder / name).write_bytes(pickle.dumps(entry))
    names = CIFAR10_CLASSES + ([f"class{i}" for i in range(4, 100)] if hundred else [])
    meta = cls.meta
    (folder / meta["filename"]).write_bytes(pickle.dumps({meta["key"]: names}))
    _patch_checksums(cls, folder, monkeypatch)
    return images


def _patch_checksums(cls, folder: Path, monkeypatch) -> None:
    monkeypatch.setattr(cls, "train_list", [[n, _md5(folder / n)] for n, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[n, _md5(folder / n)] for n, _ in cls.test_list])
    meta = cls.meta
    monkeypatch.setattr(cls, "meta", {**meta, "md5": _md5(folder / meta["filename"])})


def write_mnist(root: Path, name: str = "MNIST", *, bump: int = 0) -> dict:
    """An MNIST-family dataset (train 12, test 6 gray 28x28 images) as the raw idx files
    torchvision reads from ``root/<name>/raw``."""
    raw = root / name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    labels = {"train": np.arange(12) % 3, "t10k": np.arange(6) % 3}
    images = {s: _pixels(len(y), (28, 28), y, seed=i) for i, (s, y) in enumerate(labels.items())}
    images["train"][0, 0, 0] += bump
    for split, y in labels.items():
        x = images[split]
        header = struct.pack(">IIII", 0x803, len(x), 28, 28)
        (raw / f"{split}-images-idx3-ubyte").write_bytes(header + x.tobytes())
        header = struct.pack(">II", 0x801, len(y))
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(header + y.astype(np.uint8).tobytes())
    return {"train": images["train"], "test": images["t10k"]}


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def hf_dataset(bump: int = 0, splits=("train", "validation", "test")):
    """A DatasetDict with an Image column ``img`` (PNGs; train row 1 is RGBA with a transparent
    pixel, train row 2 is gray), a ClassLabel ``fine_label`` and a second ClassLabel
    ``coarse_label``. Returns (DatasetDict, {split: RGB pixels as decoded})."""
    import datasets

    datasets.disable_progress_bars()
    features = datasets.Features(
        {
            "img": datasets.Image(),
            "fine_label": datasets.ClassLabel(names=HF_CLASSES),
            "coarse_label": datasets.ClassLabel(names=["pet", "wild"]),
        }
    )
    sizes = {"train": 12, "validation": 6, "test": 6}
    parts, expected = {}, {}
    for i, split in enumerate(splits):
        y = np.arange(sizes[split]) % 3
        x = _pixels(len(y), (10, 12, 3), y, seed=10 + i)
        encoded = [_png(p) for p in x]
        rgb = x.copy()
        if split == "train":
            x[0, 0, 0, 0] += bump
            encoded[0] = _png(x[0])
            rgb[0] = x[0]
            rgba = np.dstack([x[1], np.full((10, 12), 255, np.uint8)])
            rgba[0, 0, 3] = 0  # one transparent pixel: composited on white
            encoded[1] = _png(rgba)
            rgb[1, 0, 0] = 255
            encoded[2] = _png(x[2, :, :, 0])  # gray
            rgb[2] = np.repeat(x[2, :, :, :1], 3, axis=2)
        parts[split] = datasets.Dataset.from_dict(
            {
                "img": [{"bytes": b, "path": None} for b in encoded],
                "fine_label": y.tolist(),
                "coarse_label": (y == 0).astype(int).tolist(),
            },
            features=features,
        )
        expected[split] = rgb
    return datasets.DatasetDict(parts), expected


def write_hf_dataset(root: Path, **kwargs) -> dict:
    data, expected = hf_dataset(**kwargs)
    data.save_to_disk(str(root))
    return expected


def write_parquet_folder(root: Path, **kwargs) -> dict:
    """The dataset of :func:`hf_dataset` as the Hub lays parquet out:
    ``root/data/<split>-00000-of-00001.parquet``."""
    data, expected = hf_dataset(**kwargs)
    (root / "data").mkdir(parents=True, exist_ok=True)
    for split, ds in data.items():
        ds.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    return expected


def write_shards(
    root: Path,
    samples: list[dict],
    per_shard: int,
    name: str = "shards",
) -> list[Path]:
    """WebDataset tar shards ``root/<name>-000000.tar``, ... written by webdataset's own
    ``TarWriter``, ``per_shard`` samples each. A sample is a dict as TarWriter takes it:
    ``{"__key__": ..., "png": bytes, "cls": 1, "json": {...}}``."""
    import webdataset

    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for start in range(0, len(samples), per_shard):
        path = root / f"{name}-{start // per_shard:06d}.tar"
        with webdataset.TarWriter(str(path)) as writer:
            for sample in samples[start : start + per_shard]:
                writer.write(sample)
        paths.append(path)
    return paths


def write_wds_dataset(root: Path, *, bump: int = 0, splits=("train", "test")) -> dict:
    """A WebDataset (train 12, test 6 PNGs of 10x12; train row 2 is gray) as shards
    ``root/<split>-00000N.tar`` of 4 samples each, keys ``<split>/0000N``, an integer
    ``.cls`` and a ``.json`` holding the class name. Returns {split: RGB pixels, in order}."""
    sizes = {"train": 12, "val": 6, "test": 6}
    expected = {}
    for i, split in enumerate(splits):
        y = np.arange(sizes[split]) % 3
        x = _pixels(len(y), (10, 12, 3), y, seed=20 + i)
        if split == "train":
            x[0, 0, 0, 0] += bump
            x[2] = np.repeat(x[2, :, :, :1], 3, axis=2)
        encoded = [_png(p) for p in x]
        if split == "train":
            encoded[2] = _png(x[2, :, :, 0])  # gray
        samples = [
            {
                "__key__": f"{split}/{j:05d}",
                "png": png,
                "cls": int(c),
                "json": {"label": HF_CLASSES[c]},
            }
            for j, (png, c) in enumerate(zip(encoded, y, strict=True))
        ]
        write_shards(root, samples, per_shard=4, name=split)
        expected[split] = x
    return expected
