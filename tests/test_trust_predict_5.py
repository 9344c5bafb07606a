"""Trust sweep of predict, round 5: its messages say what matters in a few words (the classes a
head never saw, not the ones it knows; the other backbone, not every field of two identities;
where a missing head's folder is) and count in words."""

from __future__ import annotations

import numpy as np
import pytest

from featpipe.cli import main
from featpipe.errors import ConfigError, HeadMismatchError
from featpipe.heads import check_head_matches, load_head, read_sidecar, save_head, select_and_fit
from featpipe.heads.selection import _cv_splits
from featpipe.store import write_arrays

TOY = {"spec": "toy", "weights_sha256": "a" * 64, "preprocessing": {"resize": 36, "crop": 32}}


def _store(path, classes, train_classes, backbone=TOY):
    """A store of ``classes`` with train rows of the first ``train_classes`` only (the rest
    have test rows)."""
    rng = np.random.default_rng(0)
    y = np.concatenate([np.repeat(np.arange(train_classes), 4), np.arange(len(classes))])
    X = rng.normal(size=(len(y), 4)).astype(np.float32) + 3 * y[:, None]
    splits = ["train"] * (4 * train_classes) + ["test"] * len(classes)
    return write_arrays(path, {"pooled": X}, y, splits, classes, attrs={"backbone": backbone})


def _saved_knn(tmp_path, store):
    result = select_and_fit("knn", store, "pooled", grid={"n_neighbors": [1]})
    path = tmp_path / "heads" / "knn.skops"
    return save_head(result.estimator, path, store=store, layer="pooled")


def test_the_unseen_class_warning_names_only_the_classes_never_seen(tmp_path, capsys):
    """It listed every class the head knows too: a 1000-class head missing one class printed
    999 names before the one that mattered."""
    classes = [f"known{i:02}" for i in range(20)] + [f"never{i:02}" for i in range(12)]
    store = _store(tmp_path / "s.h5", classes, train_classes=20)
    head = _saved_knn(tmp_path, store)
    with pytest.warns(UserWarning, match="never predicts") as warned:
        assert main(["predict", str(head), str(store.path), "--out", str(tmp_path / "p.csv")]) == 0
    said = next(str(w.message) for w in warned if "never predicts" in str(w.message))
    assert "20 of the 32 classes" in said and "known" not in said
    assert "never00" in said and "never09" in said and "never10" not in said
    assert "and 2 more" in said and len(said) < 400


def test_load_head_names_the_heads_beside_a_missing_one(tmp_path):
    """Only the CLI said which heads were there and how to save one; load_head said "No saved
    head at PATH"."""
    head = _saved_knn(tmp_path, _store(tmp_path / "s.h5", ["a", "b"], train_classes=2))
    with pytest.raises(ConfigError) as err:
        load_head(head.with_name("logreg.skops"))
    text = str(err.value)
    assert f"{head.parent} holds knn.skops" in text and "featpipe probe STORE --save-dir" in text


def test_a_head_in_a_missing_folder_says_the_folder_is_missing(tmp_path, capsys):
    """It said "{folder} holds no saved head" of a folder that does not exist."""
    store = _store(tmp_path / "s.h5", ["a", "b"], train_classes=2)
    head = tmp_path / "nope" / "knn.skops"
    assert main(["predict", str(head), str(store.path)]) == 2
    err = capsys.readouterr().err
    assert f"there is no folder {head.parent}" in err and "holds no saved head" not in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_store_of_another_backbone_is_refused_naming_the_two_backbones(tmp_path):
    """It was one ~900-character line of both weight hashes, preprocessing and features."""
    store = _store(tmp_path / "s.h5", ["a", "b"], train_classes=2)
    head = _saved_knn(tmp_path, store)
    other = {"spec": "timm:resnet18@none", "weights_sha256": "b" * 64}
    other_store = _store(tmp_path / "o.h5", ["a", "b"], 2, backbone={**other, "preprocessing": {}})
    with pytest.raises(HeadMismatchError) as err:
        check_head_matches(read_sidecar(head), other_store, "pooled")
    text = str(err.value)
    assert "'toy'" in text and "'timm:resnet18@none'" in text and "--backbone toy" in text
    assert "sha256" not in text and "resize" not in text and len(text) < 300


@pytest.mark.parametrize(
    ("backbone", "said", "unsaid"),
    [
        ({**TOY, "weights_sha256": "b" * 64}, "head 'aaaaaaaaaaaa...', store 'bbbbbbbbbbbb...'",
         "a" * 13),
        ({**TOY, "preprocessing": {"resize": 36, "crop": 64}},
         "preprocessing crop: head 32, store 64", "resize"),
    ],
)  # fmt: skip
def test_the_same_backbone_otherwise_names_only_what_differs(tmp_path, backbone, said, unsaid):
    head = _saved_knn(tmp_path, _store(tmp_path / "s.h5", ["a", "b"], train_classes=2))
    other = _store(tmp_path / "o.h5", ["a", "b"], 2, backbone=backbone)
    with pytest.raises(HeadMismatchError) as err:
        check_head_matches(read_sidecar(head), other, "pooled")
    assert said in str(err.value) and unsaid not in str(err.value)


def test_messages_count_in_words(tmp_path, capsys):
    """ "(s)" was left in: "1 sample(s)", "the store(s) x.h5", "1 store(s), 0 leftover
    file(s)"."""
    with pytest.raises(ConfigError, match=r"has 1 sample; "):
        _cv_splits(np.array([0, 0, 0, 1]), 5, 0)
    store = _store(tmp_path / "cache" / "s.h5", ["a", "b"], train_classes=2)
    head = _saved_knn(tmp_path, store)
    assert main(["predict", str(head), str(store.path), str(tmp_path / "x.jpg")]) == 2
    assert f"with the store {store.path}." in capsys.readouterr().err
    assert main(["cache", "list", str(tmp_path / "cache")]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("1 store, 0 leftover files,")


def test_a_weights_file_missing_one_tensor_says_1_tensor(tmp_path):
    pytest.importorskip("transformers")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    from test_trust_backbones_13 import _vit_folder

    from featpipe.backbones import get_backbone

    _vit_folder(tmp_path, pooler=True)
    file = tmp_path / "model.safetensors"
    tensors = safetensors_torch.load_file(file)
    del tensors["encoder.layer.0.attention.attention.query.weight"]
    safetensors_torch.save_file(tensors, file, metadata={"format": "pt"})
    with pytest.raises(ConfigError, match=r"would fill 1 tensor at random"):
        get_backbone(f"hf:{tmp_path}")
