"""The Embedder's feature cache is keyed by the precision the model computes in.

Its cache folder was keyed by the device's precision alone (``fp32`` on the CPU), so a
float64 model and its float32 twin (same spec, same weights) shared one folder: whichever ran
first cached features the other then returned as its own. The key now takes the model's dtype
as a store's ``compute`` does; float32 models keep their folders (existing caches stay valid)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import toy_backbone  # noqa: F401  (registers the 'toy' backbone)
from toy_backbone import build_toy

from featpipe.backbones import register_backbone
from featpipe.backbones.registry import _BUILTINS
from featpipe.extract.embedder import Embedder

# The dtype the twin's builder gives its model, read at each build: a test changes it.
TWIN = {"dtype": torch.float32}
# Cache folders of 'toy' on the CPU, pinned from the code before the model's dtype was keyed.
TOY_FOLDERS = {"exact": "411a60796f32e39ea86f32c9", "fast": "f699533b60f1c530a267d7ca"}

if "toy_emb_twin" not in _BUILTINS:

    @register_backbone("toy_emb_twin")
    def _build_twin(spec):
        backbone = build_toy(spec)
        backbone.model = backbone.model.to(TWIN["dtype"])
        return backbone


def _images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_a_model_of_another_dtype_never_reads_its_float32_twins_cached_features(
    tmp_path, monkeypatch, dtype
):
    images = _images()
    Embedder("toy_emb_twin", cache_dir=tmp_path, device="cpu", n_jobs=1).transform(images)
    monkeypatch.setitem(TWIN, "dtype", dtype)
    own = Embedder("toy_emb_twin", device="cpu", n_jobs=1).transform(images)  # no cache
    cached = Embedder("toy_emb_twin", cache_dir=tmp_path, device="cpu", n_jobs=1)
    # Before: one folder, and the float32 twin's features came back
    assert np.array_equal(cached.transform(images), own)
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 2
    assert cached.transform(images).tobytes() == own.tobytes()  # read from its own cache now


@pytest.mark.parametrize("decode", sorted(TOY_FOLDERS))
def test_a_float32_models_cache_folder_is_unchanged(tmp_path, decode):
    Embedder("toy", cache_dir=tmp_path, device="cpu", decode=decode).fit()
    assert [p.name for p in tmp_path.iterdir()] == [TOY_FOLDERS[decode]]
