"""Device strings, the current CUDA device, and cost measurement on the device asked for.

CUDA-only behaviour is checked on CPU by standing in for ``torch.cuda``'s functions; the
``gpu`` tests run the real thing where a device exists."""

from __future__ import annotations

import contextlib

import pytest
import torch

from featpipe.device import on_device, resolve_device
from featpipe.errors import ConfigError
from featpipe.evaluate.cost import measure

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def two_gpus(monkeypatch) -> list:
    """torch.cuda pretends to have two devices; returns the log of calls made on them."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)

    @contextlib.contextmanager
    def current(device):
        calls.append(("current", torch.device(device)))
        yield

    monkeypatch.setattr(torch.cuda, "device", current)
    for name in ("synchronize", "reset_peak_memory_stats"):
        monkeypatch.setattr(torch.cuda, name, lambda d=None, name=name: calls.append((name, d)))
    monkeypatch.setattr(
        torch.cuda, "max_memory_allocated", lambda d=None: calls.append(("max", d)) or 123
    )
    return calls


@pytest.mark.parametrize(
    "text", ["tpu", "cpu:0", "cuda:x", "cuda:-1", "cuda:", "auto:1", "cuda:²", "cuda:٣"]
)
def test_unknown_device_strings(text):
    with pytest.raises(ConfigError, match=rf"Unknown device '{text}'; valid: auto, cpu, cuda"):
        resolve_device(text)


def test_a_cuda_index_this_machine_lacks_is_refused(two_gpus):
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ConfigError, match=r"'cuda:2' .* 2 CUDA devices: cuda:0, cuda:1"):
        resolve_device("cuda:2")


def test_no_cuda_at_all_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="torch sees no CUDA device"):
        resolve_device("cuda:0")
    assert resolve_device("auto") == torch.device("cpu")


def test_on_device_makes_cuda_n_current_and_leaves_cpu_alone(two_gpus):
    with on_device("cpu") as device:
        assert device == torch.device("cpu")
    with on_device(torch.device("cuda:1")) as device:
        assert device == torch.device("cuda:1")
    assert two_gpus == [("current", torch.device("cuda:1"))]


def test_measure_reads_the_device_it_is_given(two_gpus):
    with measure("cuda:1") as cost:
        pass
    gpu = torch.device("cuda:1")
    assert two_gpus == [
        ("synchronize", gpu),
        ("reset_peak_memory_stats", gpu),
        ("synchronize", gpu),
        ("max", gpu),
    ]
    assert cost.peak_device_bytes == 123
    with measure("cpu") as cost:
        pass
    assert cost.peak_device_bytes is None and len(two_gpus) == 4


@pytest.mark.gpu
@needs_cuda
def test_on_device_sets_and_restores_the_current_cuda_device():
    last = torch.cuda.device_count() - 1
    before = torch.cuda.current_device()
    with on_device(f"cuda:{last}"):
        assert torch.cuda.current_device() == last
        with measure(f"cuda:{last}") as cost:
            torch.ones(1024, 1024, device=f"cuda:{last}")
    assert torch.cuda.current_device() == before
    assert cost.peak_device_bytes >= 4 * 1024 * 1024
