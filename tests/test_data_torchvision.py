"""torchvision datasets on disk: what is particular to them (the contract they share with
folders is in test_source_contract.py), and source spec errors."""

from __future__ import annotations

import re

import pytest
from dataset_files import CIFAR10_CLASSES, write_cifar, write_mnist

from featpipe.cli import main
from featpipe.data import TorchvisionSource, open_source
from featpipe.errors import ConfigError, SourceError, UnknownNameError
from featpipe.store import FeatureStore


def test_cifar10_official_splits_classes_and_ids(tmp_path, monkeypatch):
    write_cifar(tmp_path, monkeypatch)
    source = open_source(f"torchvision:cifar10@{tmp_path}")  # names match case-insensitively
    assert isinstance(source, TorchvisionSource)
    assert source.classes == CIFAR10_CLASSES
    assert source.split_counts() == {"train": 20, "val": 0, "test": 6}
    assert source.ids[:2] == ["train/00000", "train/00001"] and source.ids[20] == "test/00000"
    assert source.describe()["name"] == "CIFAR10" and source.describe()["root"] == str(tmp_path)


def test_a_missing_or_corrupted_root_names_the_files_torchvision_expects(tmp_path, monkeypatch):
    with pytest.raises(SourceError, match=r"cifar-10-batches-py/data_batch_1.*does not exist"):
        open_source(f"torchvision:CIFAR10@{tmp_path / 'nowhere'}")
    write_mnist(tmp_path, "MNIST")
    with pytest.raises(SourceError) as err:
        open_source(f"torchvision:FashionMNIST@{tmp_path}")
    assert "FashionMNIST/raw/train-images-idx3-ubyte" in str(err.value)
    assert "lacks 4 of them" in str(err.value) and "download=True" in str(err.value)
    write_cifar(tmp_path, monkeypatch)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"damaged")
    with pytest.raises(SourceError, match=r"data_batch_3 looks truncated or damaged"):
        open_source(f"torchvision:CIFAR10@{tmp_path}")


@pytest.mark.parametrize("keep", [0.5, 0.0])
def test_a_truncated_file_is_named(tmp_path, keep):
    write_mnist(tmp_path, "MNIST")
    images = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[: int(len(images.read_bytes()) * keep)])
    with pytest.raises(SourceError) as err:
        open_source(f"torchvision:MNIST@{tmp_path}")
    message = str(err.value)
    assert "MNIST/raw/train-images-idx3-ubyte looks truncated or damaged" in message
    assert "labels" not in message and "Copy it again" in message and "download=True" in message


@pytest.mark.parametrize(
    ("spec", "error", "match"),
    [
        ("torchvision:CIFAR11@/x", UnknownNameError, r"Did you mean: 'CIFAR10', 'CIFAR100'"),
        ("torchvision:SVHN@/x", UnknownNameError, "Valid: CIFAR10, CIFAR100, FashionMNIST"),
        ("torchvision:CIFAR10", ConfigError, r"torchvision:NAME@ROOT"),
        ("torchvison:CIFAR10@/x", ConfigError, r"Did you mean: 'torchvision:'"),
        ("hf-datasets:/x", ConfigError, r"Did you mean: 'hf-dataset:'"),
        ("hf-dataset:/nowhere", SourceError, "does not exist"),
    ],
)
def test_spec_errors(spec, error, match):
    with pytest.raises(error, match=match):
        open_source(spec)


def test_extract_from_the_command_line(tmp_path, monkeypatch, capsys):
    write_mnist(tmp_path / "root", "MNIST")
    args = ["extract", f"torchvision:MNIST@{tmp_path / 'root'}", "--backbone", "toy"]
    args += ["--workers", "0", "--device", "cpu", "--no-progress", "--val-fraction", "0.25"]
    assert main([*args, "--cache-dir", str(tmp_path / "cache"), "--layers", "pooled"]) == 0
    path = re.search(r"features written to (\S+)", capsys.readouterr().out).group(1)
    assert "MNIST-toy-" in path
    store = FeatureStore(path)
    assert store.split_counts() == {"train": 9, "val": 3, "test": 6}
    assert store.ids("test")[0] == "test/00000" and store.classes[0] == "0 - zero"
