"""Embedder: images in, backbone features out, cached per image across CV folds."""

from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest
import torch
from conftest import random_images_store
from PIL import Image
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.utils import estimator_checks as ec
from toy_backbone import build_toy

import featpipe
from featpipe.backbones import get_backbone, register_backbone, unregister_backbone
from featpipe.errors import ConfigError, ImageReadError
from featpipe.extract import lanes as lanes_module
from featpipe.extract import loop
from featpipe.heads import Embedder

IMAGES_FORWARDED = [0]


def build_counting_toy(spec):
    """The toy backbone, counting every image that goes through its forward pass."""
    bb = build_toy(spec)
    bb.model.register_forward_pre_hook(
        lambda _m, inp: IMAGES_FORWARDED.__setitem__(0, IMAGES_FORWARDED[0] + inp[0].shape[0])
    )
    return bb


@pytest.fixture(autouse=True, scope="module")
def counting_toy():
    """Registered for this module only: other tests list the registry."""
    register_backbone("counting_toy")(build_counting_toy)
    yield
    unregister_backbone("counting_toy")


def image_paths(folder) -> tuple[list[str], np.ndarray]:
    files = sorted(folder.rglob("*.jpg"))
    return [str(f) for f in files], np.array([f.parent.name for f in files])


def test_features_match_the_backbone_in_eval_mode(image_folder) -> None:
    paths, _ = image_paths(image_folder)
    out = Embedder("toy", batch_size=4, device="cpu").fit().transform(paths)
    assert out.shape == (18, 32) and out.dtype == np.float32
    bb = get_backbone("toy")
    tf = bb.preprocessing.transform()
    with torch.inference_mode():
        batch = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths])
        ref = bb.features(["pooled"])(batch)["pooled"].numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_paths_pil_and_arrays_give_the_same_features(image_folder) -> None:
    paths, _ = image_paths(image_folder)
    pil = [Image.open(p).convert("RGB") for p in paths[:3]]
    arrays = [np.asarray(im) for im in pil]
    emb = Embedder("toy", device="cpu").fit()
    a, b, c = emb.transform(paths[:3]), emb.transform(pil), emb.transform(np.stack(arrays))
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(a, c, atol=1e-6)
    assert emb.get_feature_names_out()[0] == "pooled_0"
    with pytest.raises(ConfigError, match="uint8"):
        emb.transform([np.zeros((8, 8, 3), np.float32)])


def test_grid_search_computes_each_image_once_with_a_cache(image_folder, tmp_path) -> None:
    paths, labels = image_paths(image_folder)
    pipe = make_pipeline(
        Embedder("counting_toy", device="cpu", cache_dir=tmp_path / "cache"),
        LogisticRegression(max_iter=500),
    )
    search = GridSearchCV(pipe, {"logisticregression__C": [0.1, 1.0]}, cv=3)
    IMAGES_FORWARDED[0] = 0
    search.fit(paths, labels)
    # every image once, plus one blank image that measures the output width
    assert IMAGES_FORWARDED[0] == len(paths) + 1
    IMAGES_FORWARDED[0] = 0
    search.predict(paths)
    assert IMAGES_FORWARDED[0] == 0

    uncached = GridSearchCV(
        make_pipeline(Embedder("counting_toy", device="cpu"), LogisticRegression(max_iter=500)),
        {"logisticregression__C": [0.1, 1.0]},
        cv=3,
    )
    uncached.fit(paths, labels)
    assert IMAGES_FORWARDED[0] > 3 * len(paths)


def test_cache_notices_a_changed_file(image_folder, tmp_path) -> None:
    paths, _ = image_paths(image_folder)
    emb = Embedder("toy", device="cpu", cache_dir=tmp_path / "c").fit()
    before = emb.transform(paths[:1])
    Image.new("RGB", (20, 16), (255, 0, 0)).save(paths[0])
    after = emb.transform(paths[:1])
    assert not np.allclose(before, after)


def test_sklearn_api_conventions() -> None:
    emb = Embedder("toy", device="cpu")
    for check in (
        ec.check_no_attributes_set_in_init,
        ec.check_parameters_default_constructible,
        ec.check_get_params_invariance,
        ec.check_set_params,
        ec.check_estimator_repr,
        ec.check_estimator_cloneable,
    ):
        check("Embedder", emb)
    fitted = emb.fit()
    clone_ = pickle.loads(pickle.dumps(fitted))
    assert clone_.n_features_out_ == 32 and clone(emb).get_params() == emb.get_params()
    assert featpipe.Embedder is Embedder


def test_features_are_the_stores_features_of_the_same_images(tmp_path) -> None:
    # One forward pass: the Embedder computes what extraction stores (same precision policy).
    images, store = random_images_store(tmp_path, "float32")
    out = Embedder("toy", batch_size=4, device="cpu").fit().transform(images)
    np.testing.assert_allclose(out, store.arrays("pooled")[0], rtol=1e-6, atol=1e-6)


@pytest.fixture
def two_cores(monkeypatch):
    """Two cores whatever the machine has: two lanes of one thread each."""
    monkeypatch.setattr(loop, "available_cores", lambda: 2)
    monkeypatch.setattr(lanes_module, "available_cores", lambda: 2)


def test_transform_runs_its_batches_in_lanes_in_order(image_folder, two_cores, monkeypatch):
    seen = []
    forward = Embedder._forward

    def spy(self, images):
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        return forward(self, images)

    monkeypatch.setattr(Embedder, "_forward", spy)
    paths, _ = image_paths(image_folder)
    emb = Embedder("toy", batch_size=4, device="cpu").fit()
    seen.clear()  # fit's probe pass
    before = torch.get_num_threads()
    out = emb.transform(paths)
    assert len(seen) == 5  # 18 images in batches of 4
    assert all(name.startswith("featpipe-lane") and threads == 1 for name, threads in seen)
    assert torch.get_num_threads() == before  # restored after the lanes
    one_by_one = np.concatenate([emb.transform([p]) for p in paths])  # one batch: no lanes
    np.testing.assert_allclose(out, one_by_one, rtol=1e-5, atol=1e-6)
    seen.clear()
    serial = emb.set_params(n_jobs=1).transform(paths)
    assert len(seen) == 5 and {name for name, _ in seen} == {threading.current_thread().name}
    np.testing.assert_allclose(out, serial, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="n_jobs must be >= 1"):
        Embedder("toy", n_jobs=0).fit()


def test_an_unreadable_image_in_a_lane_raises_its_own_error(image_folder, two_cores, tmp_path):
    paths, _ = image_paths(image_folder)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    before = torch.get_num_threads()
    with pytest.raises(ImageReadError, match=r"broken\.jpg"):
        Embedder("toy", batch_size=4, device="cpu").fit().transform([*paths, str(broken)])
    assert torch.get_num_threads() == before
