"""featpipe predict on images computes the features its head's store held: a head trained on a
``--decode fast`` store decodes the images fast too (its sidecar records the store's decode
path and precision)."""

from __future__ import annotations

import csv
import io
import json
import warnings

import numpy as np
import pytest
import toy_backbone  # noqa: F401  (registers the 'toy' backbone)
from PIL import Image
from sklearn.linear_model import LogisticRegression

from featpipe import extract
from featpipe.cli import main
from featpipe.heads import Embedder, read_sidecar, save_head
from featpipe.heads.persistence import sidecar_path

QUIET = {"workers": 0, "device": "cpu", "progress": False}


@pytest.fixture
def fast_head(tmp_path):
    """(image folder, its --decode fast store, a head saved on it): 160 px JPEGs, which a
    fast decode reads at a quarter of their size before the toy's resize to 36."""
    rng = np.random.default_rng(0)
    root = tmp_path / "img"
    for c in "ab":
        (root / c).mkdir(parents=True)
        for i in range(4):
            ramp = np.linspace(0, 255, 160)[None, :, None] * rng.random((1, 1, 3))
            noise = rng.integers(0, 60, (160, 160, 3))
            pixels = (ramp + noise).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}.jpg", quality=90)
    store = extract(str(root), "toy", ["pooled"], out=tmp_path / "s.h5", decode="fast", **QUIET)
    X, y = store.arrays("pooled")
    head = tmp_path / "head.joblib"
    save_head(LogisticRegression(C=100).fit(X, y), head, store=store, layer="pooled")
    return root, store, head


def _predict(args, capsys) -> dict[str, tuple[str, float]]:
    capsys.readouterr()
    assert main(["predict", *args]) == 0
    rows = csv.DictReader(io.StringIO(capsys.readouterr().out))
    return {r["id"]: (r["predicted_class"], float(r["probability"])) for r in rows}


def test_predict_on_images_equals_predict_on_a_fast_decode_store(fast_head, capsys):
    """The images were decoded exactly: probabilities differed from the store's by 0.003
    here (0.02 on other images), enough to flip a class near the boundary."""
    root, store, head = fast_head
    on_store = _predict([str(head), str(store.path)], capsys)
    on_images = _predict([str(head), str(root), "--device", "cpu"], capsys)
    assert len(on_store) == len(on_images) == 8
    for sid, (label, prob) in on_store.items():
        got_label, got_prob = on_images[str(root / sid)]
        assert got_label == label and got_prob == pytest.approx(prob, abs=1e-6), sid
    assert read_sidecar(head)["compute"] == {"decode": "pil-fast", "precision": "fp32"}


def test_embedder_decode_fast_gives_a_fast_stores_features(fast_head, tmp_path):
    root, store, _ = fast_head
    files = [str(root / sid) for sid in store.ids()]
    want = store.arrays("pooled")[0]  # float16, the store's default
    fast = Embedder("toy", decode="fast", device="cpu", cache_dir=tmp_path / "c")
    np.testing.assert_array_equal(fast.fit_transform(files).astype(np.float16), want)
    # exact features differ, and are not taken from the fast ones' cache
    exact = Embedder("toy", device="cpu", cache_dir=tmp_path / "c").fit_transform(files)
    assert np.abs(exact - want).max() > 1e-3
    with pytest.raises(Exception, match="decode"):
        Embedder("toy", decode="fastest").fit()


def test_a_sidecar_without_the_stores_decode_warns_once(fast_head):
    """A head saved before the sidecar recorded the decode: predicted as before (exact), with
    one warning that says what may differ."""
    root, _, head = fast_head
    side = read_sidecar(head)
    del side["compute"]
    side["format_version"] = 3
    sidecar_path(head).write_text(json.dumps(side))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["predict", str(head), str(root / "a"), "--device", "cpu"]) == 0
    said = [
        str(w.message) for w in caught if "does not record how its store decoded" in str(w.message)
    ]
    assert len(said) == 1 and "decoded exactly" in said[0], said


def test_a_store_computed_otherwise_than_here_warns(fast_head):
    """A store extracted on CUDA (bf16 autocast, nvJPEG decode), predicted on a CPU: the
    features cannot be the store's; say so instead of passing silently."""
    root, _, head = fast_head
    side = read_sidecar(head)
    side["compute"] = {"decode": "nvjpeg", "precision": "bf16"}
    sidecar_path(head).write_text(json.dumps(side))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["predict", str(head), str(root / "a"), "--device", "cpu"]) == 0
    said = [str(w.message) for w in caught if "trained on features computed with" in str(w.message)]
    assert len(said) == 1 and "'precision': 'bf16'" in said[0], said
    assert "these images are computed with {'precision': 'fp32'" in said[0]


def test_predict_on_a_store_computed_otherwise_warns(fast_head, tmp_path):
    """A head of a --decode fast store predicting on an exact store of the same images: other
    features, without a word."""
    root, _, head = fast_head
    exact = extract(str(root), "toy", ["pooled"], out=tmp_path / "exact.h5", **QUIET)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["predict", str(head), str(exact.path)]) == 0
    said = [str(w.message) for w in caught if "trained on features computed with" in str(w.message)]
    assert len(said) == 1 and "'decode': 'pil-fast'" in said[0], said
    assert "the store's were computed with {'decode': 'pil'" in said[0]
