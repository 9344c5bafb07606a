"""Shared fixtures and helpers: the ``toy`` backbone and variants of it, tiny image folders,
small stores and pipelines, and the shared CIFAR-10 archive."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from toy_backbone import ToyNet, build_toy  # importing it registers the 'toy' backbone

import featpipe
from featpipe.backbones import register_backbone
from featpipe.backbones.registry import _BUILTINS
from featpipe.pipeline import config_from_dict
from featpipe.store import FeatureStore
from featpipe.store.writer import StoreWriter, write_arrays

# A shell without job control starts background commands (`cmd &`) with SIGINT ignored, which
# processes inherit: the Ctrl-C tests would see nothing. Ctrl-C's usual handling, for this
# process and the children it starts.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CIFAR_ARCHIVE = SHARED_DATA / "cifar10-jpg.tar.gz"


def make_image_folder(
    root: Path,
    classes=("cat", "dog", "fox"),
    per_class=6,
    size=(20, 16),
    seed=0,
    splits: tuple[str, ...] | None = None,
) -> Path:
    """Write small random RGB JPEGs as root/[split/]class/NNN.jpg; returns root."""
    rng = np.random.default_rng(seed)
    for split in splits or (None,):
        for ci, name in enumerate(classes):
            folder = root / split / name if split else root / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                base = np.full((size[1], size[0], 3), 40 + 70 * ci, np.uint8)
                noise = rng.integers(0, 60, base.shape, dtype=np.uint8)
                Image.fromarray(base + noise).save(folder / f"{i:03d}.jpg", quality=90)
    return root


WHITE = ("test/cat/001.jpg", "train/dog/002.jpg")


def make_white_folder(root: Path) -> Path:
    """root/{train,val,test}/{cat,dog,fox}/NNN.jpg, 4 images a class, with the ``WHITE``
    images plain white (for models made to give NaN features on white images)."""
    make_image_folder(root, per_class=4, splits=("train", "val", "test"))
    for name in WHITE:
        Image.new("RGB", (20, 16), "white").save(root / name, quality=90)
    return root


class WhiteNaN(ToyNet):
    """The toy CNN giving NaN features for white images (and only for them)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        white = x.flatten(1).mean(1) > 2.3  # normalised white; the random images stay below 2
        return super().forward(torch.where(white[:, None, None, None], torch.nan, x))


def register_white_nan(name: str) -> None:
    """Register the backbone ``name`` (once a process): ``toy`` with the WhiteNaN model."""
    if name not in _BUILTINS:

        @register_backbone(name)
        def _build(spec):
            backbone = build_toy(spec)
            backbone.model = WhiteNaN()
            return backbone


# The stage list each staged toy's builder gives, read at each build: a test changes it
# (monkeypatch.setitem) to change the backbone's stages and nothing else.
STAGES: dict[str, list] = {}


def register_staged_toy(name: str) -> None:
    """Register the backbone ``name`` (once a process): ``toy`` with the stage list
    STAGES[name], at first toy's own (stem, stage1, stage2)."""
    STAGES.setdefault(name, ["stem", "stage1", "stage2"])
    if name not in _BUILTINS:

        @register_backbone(name)
        def _build(spec):
            backbone = build_toy(spec)
            backbone.stages = STAGES[name]
            return backbone


def make_chunked_store(path: Path, done: int = 4) -> np.ndarray:
    """A store of 40 rows in chunks of 10, ``done`` chunks written (complete when 4); its rows."""
    x = np.arange(40 * 8, dtype=np.float32).reshape(40, 8) + 1
    with StoreWriter.create(
        path,
        ids=[f"img{i}" for i in range(40)],
        labels=np.arange(40) % 2,
        splits=np.repeat([0, 2], 20),
        classes=["a", "b"],
        layers={"pooled": (8, "avg")},
        dtype="float32",
        rows_per_chunk=10,
        attrs={"key": "0123456789abcdef"},
    ) as w:
        for i in range(done):
            w.write_chunk(i, {"pooled": x[i * 10 : (i + 1) * 10]})
        if done == 4:
            w.finish()
    return x


def listed_store(
    path: Path,
    order: np.ndarray,
    features: dict[str, np.ndarray],
    labels: np.ndarray,
    splits: np.ndarray,
    ids: np.ndarray,
    rows_per_chunk: int,
) -> FeatureStore:
    """A complete store (key "k", classes a, b, c) of these rows listed in ``order``: the same
    images as another order lists them, for results that must not depend on the listing."""
    return write_arrays(
        path,
        {name: x[order] for name, x in features.items()},
        labels[order],
        splits[order],
        ["a", "b", "c"],
        ids=np.asarray(ids)[order],
        attrs={"key": "k"},
        rows_per_chunk=rows_per_chunk,
    )


def random_images_store(tmp_path: Path, dtype: str) -> tuple[np.ndarray, FeatureStore]:
    """Ten random 40x30 RGB images (labels 0, 1, 0, ...) and their ``toy`` store at ``dtype``
    (tmp_path/s.h5)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 40, 30, 3), dtype=np.uint8)
    store = featpipe.extract(
        featpipe.ArraySource(images, np.arange(10) % 2),
        "toy",
        out=tmp_path / "s.h5",
        dtype=dtype,
        device="cpu",
        workers=0,
        progress=False,
    )
    return images, store


def digits_config(
    tmp_path: Path, name: str, probes: dict | None = None, finetune=None, backbones=("toy",)
):
    """A pipeline on 60/30/30 digits through ``backbones`` (toy) at 16 px, out and cache under
    tmp_path; the ``probes`` (knn when None) and a ``finetune`` section when given."""
    raw = {
        "name": name,
        "out": str(tmp_path / "run"),
        "n_boot": 40,
        "device": "cpu",
        "source": {"data": "digits", "limits": {"train": 60, "val": 30, "test": 30}},
        "features": {
            "backbones": list(backbones),
            "image_size": 16,
            "workers": 0,
            "cache_dir": str(tmp_path / "cache"),
        },
        "probes": probes or {"heads": ["knn"]},
    }
    if finetune is not None:
        raw["finetune"] = finetune
    return config_from_dict(raw)


def hash_contents_config(tmp_path: Path, name: str, data: Path):
    """A pipeline that fine-tunes ``toy`` (head, 1 epoch) on the image folder ``data`` under
    hash_contents, with no probes."""
    return config_from_dict({
        "name": name, "out": str(tmp_path / "run"), "n_boot": 40, "device": "cpu",
        "source": {"data": str(data), "hash_contents": True},
        "features": {"backbones": ["toy"], "image_size": 16, "workers": 0,
                     "cache_dir": str(tmp_path / "c")},
        "probes": {"heads": []},
        "finetune": {"modes": ["head"], "epochs": 1, "workers": 0},
    })  # fmt: skip


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's digits, 70 % train / 30 % test (stratified), standardised on train:
    X_tr, y_tr, X_te, y_te."""
    X, y = load_digits(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    scaler = StandardScaler().fit(X_tr)
    return scaler.transform(X_tr), y_tr, scaler.transform(X_te), y_te


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """root/{cat,dog,fox}/NNN.jpg, 6 images per class."""
    return make_image_folder(tmp_path / "images")


@pytest.fixture
def split_image_folder(tmp_path: Path) -> Path:
    """root/{train,val,test}/{cat,dog,fox}/NNN.jpg."""
    return make_image_folder(tmp_path / "splits", per_class=4, splits=("train", "val", "test"))


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory) -> Path:
    """The shared CIFAR-10 JPEGs, extracted once per session (skips when absent)."""
    if not CIFAR_ARCHIVE.exists():
        pytest.skip(f"{CIFAR_ARCHIVE} is not on this machine")
    root = tmp_path_factory.mktemp("cifar10")
    with tarfile.open(CIFAR_ARCHIVE) as tar:
        tar.extractall(root, filter="data")
    return root


def record_calls(monkeypatch, owner, name: str) -> list:
    """Wrap ``owner.name`` to record each call's first argument (and make the call); the
    record."""
    calls = []
    real = getattr(owner, name)

    def recorded(first, *args, **kwargs):
        calls.append(first)
        return real(first, *args, **kwargs)

    monkeypatch.setattr(owner, name, recorded)
    return calls


def python_child(code: str, *args: str) -> subprocess.Popen:
    """``python -c code args...`` with text pipes to its stdin and from its stdout: a process
    that holds a file until the test writes to (or closes) its stdin."""
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


class WriteRecorder(io.StringIO):
    """A stream that records each write call: a line must reach a shared log in one write."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def write(self, text: str) -> int:
        self.calls.append(text)
        return super().write(text)
