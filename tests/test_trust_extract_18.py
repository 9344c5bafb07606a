"""Embedder's feature cache: entries written whole but not synced, checked when read (one that
cannot be trusted is computed again); the non-finite message's precision; a fit that follows
the device and decode."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import toy_backbone  # noqa: F401  (registers 'toy')
from conftest import WhiteNaN, record_calls, register_white_nan
from toy_backbone import build_toy

from featpipe.backbones import register_backbone
from featpipe.backbones.registry import _BUILTINS
from featpipe.errors import NonFiniteFeaturesError
from featpipe.extract import inference as inference_module
from featpipe.heads import Embedder


def images(n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 200, (20, 24, 3), dtype=np.uint8) for _ in range(n)]


def cached_embedder(tmp_path) -> Embedder:
    return Embedder("toy", device="cpu", n_jobs=1, cache_dir=tmp_path / "cache").fit()


def entries(tmp_path) -> list:
    return sorted((tmp_path / "cache").glob("*/*.npy"))


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda file: file.write_bytes(b""), id="empty"),
        pytest.param(lambda file: file.write_bytes(file.read_bytes()[:-7]), id="cut-short"),
        pytest.param(lambda file: file.write_bytes(file.read_bytes()[:60]), id="header-cut"),
        pytest.param(lambda file: np.save(file, np.ones(5, np.float32)), id="wrong-shape"),
        pytest.param(lambda file: np.save(file, np.ones(32, np.float64)), id="wrong-dtype"),
        pytest.param(lambda file: np.save(file, np.full(32, np.nan, np.float32)), id="nan"),
    ],
)
def test_an_entry_that_cannot_be_trusted_is_computed_and_written_again(tmp_path, damage) -> None:
    emb = cached_embedder(tmp_path)
    expected = emb.transform(images())
    [first, *_] = entries(tmp_path)
    saved = np.load(first)
    damage(first)
    again = cached_embedder(tmp_path).transform(images())
    # no error, not the damaged entry (computed alone, not in a batch of 3: a rounding apart)
    np.testing.assert_allclose(again, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.load(first), saved, rtol=1e-5, atol=1e-7)  # whole again


def test_cache_entries_are_written_without_syncing(tmp_path, monkeypatch) -> None:
    emb = cached_embedder(tmp_path)  # fit writes the folder's meta.json, synced
    syncs = record_calls(monkeypatch, os, "fsync")
    emb.transform(images(4))
    assert len(entries(tmp_path)) == 4
    assert syncs == []


class WhiteNaN64(WhiteNaN):
    """WhiteNaN in float64: NaN features for white images, computed in fp64."""

    def __init__(self):
        super().__init__()
        self.double()


if "white_nan_f64" not in _BUILTINS:

    @register_backbone("white_nan_f64")
    def _build(spec):
        backbone = build_toy(spec)
        backbone.model = WhiteNaN64()
        return backbone


register_white_nan("white_nan")


def on_simulated_cuda(monkeypatch) -> None:
    """The device autocasts to bf16, as CUDA does (the forward pass runs on the CPU)."""
    monkeypatch.setattr(inference_module, "amp_dtype", lambda device: torch.bfloat16)


WHITE = [np.full((20, 24, 3), 255, np.uint8)]


def test_a_float64_model_is_not_told_that_autocast_overflows(monkeypatch) -> None:
    on_simulated_cuda(monkeypatch)
    emb = Embedder("white_nan_f64", device="cpu", n_jobs=1).fit()
    assert emb.compute_["precision"] == "fp64"
    with pytest.raises(NonFiniteFeaturesError) as error:
        emb.transform(WHITE)
    assert "autocast" not in str(error.value) and "device='cpu'" not in str(error.value)


def test_a_float32_model_under_autocast_is_told_to_compute_in_fp32(monkeypatch) -> None:
    on_simulated_cuda(monkeypatch)
    emb = Embedder("white_nan", device="cpu", n_jobs=1).fit()
    with pytest.raises(NonFiniteFeaturesError, match=r"device='cpu'; bf16 autocast overflows"):
        emb.transform(WHITE)


def test_decode_set_after_fit_is_what_compute_records() -> None:
    emb = Embedder("toy", device="cpu", n_jobs=1).fit()
    emb.set_params(decode="fast").transform(images(1))
    assert emb.compute_["decode"] == "pil-fast"


def test_device_set_after_fit_is_what_compute_records(monkeypatch) -> None:
    emb = Embedder("toy", device="cpu", n_jobs=1).fit()
    assert emb.compute_["precision"] == "fp32"
    on_simulated_cuda(monkeypatch)  # the device set next computes under bf16 autocast
    emb.set_params(device="auto").transform(images(1))
    assert emb.compute_["precision"] == "bf16"
