"""Embedder's cache and a model changed under its name: the cache key was the backbone's
identity (spec, weights' hash, preprocessing) and the layer, so two models differing only in a
module without weights (a pooling's output size) shared one cache folder. Under the first, the
folder's meta.json records its width and every entry has it; the second, fully cached, once
read that width at fit and returned the first model's features. An entry's digest is now keyed by
the model's architecture (its modules as repr prints them): another architecture's entries
are misses, computed again, and the first computed batch corrects meta.json's width; entries
written before (a legacy digest) are misses too, computed again once. A cache of the same
architecture still costs no forward."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from conftest import record_calls
from test_trust_extract_18 import images
from torch import nn
from toy_backbone import ToyNet, build_toy

from featpipe.backbones import register_backbone
from featpipe.backbones.registry import _BUILTINS
from featpipe.extract.embedder import Embedder, _entry_bytes

# The output size of the pooling that the 'toy_pooled_grid' model flattens: a test changes it
# (monkeypatch.setitem), which changes the model's width and not its weights.
GRID = {"size": 1}


class GridNet(ToyNet):
    """The toy CNN giving its last stage pooled to a GRID x GRID grid, flattened."""

    def __init__(self):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(GRID["size"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.stage2(self.stage1(self.stem(x)))).flatten(1)


if "toy_pooled_grid" not in _BUILTINS:

    @register_backbone("toy_pooled_grid")
    def _build(spec):
        backbone = build_toy(spec)  # seeds torch: GridNet's weights are toy's
        backbone.model = GridNet()
        return backbone


def embedder(tmp_path) -> Embedder:
    return Embedder("toy_pooled_grid", "logits", device="cpu", n_jobs=1, cache_dir=tmp_path)


def test_the_changed_model_shares_the_folder_its_key_names(tmp_path, monkeypatch) -> None:
    """Why the case arises: nothing in the key tells the two models apart."""
    first = embedder(tmp_path).fit()
    monkeypatch.setitem(GRID, "size", 2)
    second = embedder(tmp_path).fit()
    assert second.backbone_identity_ == first.backbone_identity_
    assert second._cache_folder() == first._cache_folder()
    assert second._architecture() != first._architecture()


def test_a_fully_cached_transform_of_a_changed_model_gives_its_own_features(
    tmp_path, monkeypatch
) -> None:
    old = embedder(tmp_path).fit().transform(images(3))
    assert old.shape == (3, 32)
    monkeypatch.setitem(GRID, "size", 2)
    expected = Embedder("toy_pooled_grid", "logits", device="cpu", n_jobs=1).fit()
    expected = expected.transform(images(3))
    assert expected.shape == (3, 128)
    emb = embedder(tmp_path).fit()
    assert emb.n_features_out_ == 32  # meta.json's, stale: the computed batch corrects it
    forwards = record_calls(monkeypatch, emb, "_forward")
    np.testing.assert_array_equal(emb.transform(images(3)), expected)
    assert emb.n_features_out_ == 128
    assert [len(batch) for batch in forwards] == [3]  # the first model's entries: misses
    # its rows are cached: read again, with no forward
    again = embedder(tmp_path)
    forwards = record_calls(monkeypatch, again, "_forward")
    np.testing.assert_array_equal(again.fit().transform(images(3)), expected)
    assert forwards == []
    # and back to the first model: its own rows again, computed again (one folder)
    monkeypatch.setitem(GRID, "size", 1)
    first = embedder(tmp_path)
    forwards = record_calls(monkeypatch, first, "_forward")
    np.testing.assert_array_equal(first.fit().transform(images(3)), old)
    assert [len(batch) for batch in forwards] == [3]


def test_a_right_cache_costs_no_forward(tmp_path, monkeypatch) -> None:
    features = embedder(tmp_path).fit().transform(images(3))
    emb = embedder(tmp_path)
    forwards = record_calls(monkeypatch, emb, "_forward")
    np.testing.assert_array_equal(emb.fit().transform(images(3)), features)
    assert forwards == []


def as_legacy(tmp_path) -> None:
    """The cache's entries as they were written before digests were keyed."""
    for file in tmp_path.glob("*/*.npy"):
        file.write_bytes(_entry_bytes(np.load(file)))


def test_legacy_entries_are_computed_again_once(tmp_path, monkeypatch) -> None:
    """Entries written before digests were keyed: no probe can tell whether they are this
    model's. A probe of their width (the first fix) served another model's rows of the same
    width (average against max pooling) and keyed them as this one's; they are misses now."""
    embedder(tmp_path).fit().transform(images(3))
    as_legacy(tmp_path)
    monkeypatch.setattr(GridNet, "forward", _max_pooled)  # same width, other values
    expected = Embedder("toy_pooled_grid", "logits", device="cpu", n_jobs=1).fit()
    expected = expected.transform(images(3))
    emb = embedder(tmp_path)
    forwards = record_calls(monkeypatch, emb, "_forward")
    np.testing.assert_array_equal(emb.fit().transform(images(3)), expected)
    assert [len(batch) for batch in forwards] == [3]  # the rows, computed again
    again = embedder(tmp_path)
    forwards = record_calls(monkeypatch, again, "_forward")
    np.testing.assert_array_equal(again.fit().transform(images(3)), expected)
    assert forwards == []  # written again keyed


def _max_pooled(self, x: torch.Tensor) -> torch.Tensor:
    pooled = nn.functional.adaptive_max_pool2d(self.stage2(self.stage1(self.stem(x))), 1)
    return pooled.flatten(1)


@pytest.mark.parametrize("refit", [False, True])
def test_a_fitted_embedder_whose_model_changed_is_fitted_again(
    tmp_path, monkeypatch, refit
) -> None:
    """A fitted Embedder (here unpickled) whose model's architecture is
    not the one it was fitted with records the width again before reading the cache."""
    emb = embedder(tmp_path).fit()
    emb.transform(images(2))
    monkeypatch.setitem(GRID, "size", 2)
    emb = pickle.loads(pickle.dumps(emb))  # its model is built again from its spec
    if refit:
        emb.fit()
    assert emb.transform(images(2)).shape == (2, 128)
    assert len(emb.get_feature_names_out()) == 128
