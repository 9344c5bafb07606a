"""Pipeline trust checks, session 13 (round 2): what the check refuses before extraction."""

from __future__ import annotations

import pytest
import toy_backbone  # noqa: F401  (registers the 'toy' backbone)
from conftest import make_image_folder

from featpipe.errors import ConfigError
from featpipe.pipeline import config_from_dict, run_pipeline


def _config(tmp_path, source, probes, finetune=None):
    raw = {
        "name": "thirteen", "out": str(tmp_path / "run"), "device": "cpu", "n_boot": 40,
        "source": source,
        "features": {"backbones": ["toy"], "image_size": 16, "workers": 0,
                     "cache_dir": str(tmp_path / "c")},
        "probes": {"heads": probes},
    }  # fmt: skip
    if finetune:
        raw["finetune"] = {"modes": finetune, "epochs": 1, "batch_size": 2, "workers": 0}
    return config_from_dict(raw)


def _refused(config, match, tmp_path):
    with pytest.raises(ConfigError, match=match):
        run_pipeline(config, progress=False, log=lambda _: None)
    assert not (tmp_path / "run").exists() and not (tmp_path / "c").exists()


@pytest.mark.parametrize("head", ["logreg_stream", "knn_faiss"])
@pytest.mark.parametrize("sizes", [[], [10, 20]])
def test_a_streamed_head_without_a_val_split_is_refused_at_the_check(tmp_path, head, sizes):
    # Before: refused by the head's selection after extraction (the store and run folder
    # written), at each size of a sweep too.
    source = {"data": "digits", "val_fraction": 0.0, "limits": {"train": 30, "test": 15}}
    config = _config(tmp_path, {**source, "train_sizes": sizes}, ["knn", head])
    _refused(config, rf"probes.heads: {head} reads .* val split, which the source", tmp_path)


def _imbalanced(tmp_path):
    """train: 19 images of class a, 1 of b; val and test: 4 of each."""
    root = tmp_path / "imbalanced"
    for split, n_a, n_b in (("train", 19, 1), ("val", 4, 4), ("test", 4, 4)):
        make_image_folder(root / split, classes=("a",), per_class=n_a, size=(8, 8), seed=1)
        make_image_folder(root / split, classes=("b",), per_class=n_b, size=(8, 8), seed=2)
    return str(root)


@pytest.mark.parametrize(("probes", "finetune"), [(["knn"], None), ([], ["head"])])
def test_a_sweep_subset_of_one_class_is_refused_at_the_check(tmp_path, probes, finetune):
    # A 2-image subset of a 19/1 train split keeps each class's share: 2 images of a. Before:
    # the heads refused it after extraction; a fine-tune once it started (or trained on it).
    source = {"data": _imbalanced(tmp_path), "train_sizes": [2, 10]}
    said = r"source.train_sizes \[2\]: the train subset of 2 images holds only class 'a'"
    _refused(_config(tmp_path, source, probes, finetune), said, tmp_path)


def test_a_sweep_whose_subsets_hold_two_classes_passes_the_check(tmp_path):
    from featpipe.data import open_source
    from featpipe.pipeline.validate import check_sizes

    source = {"data": _imbalanced(tmp_path), "train_sizes": [15, 20]}
    check_sizes(_config(tmp_path, source, ["knn"]), open_source(source["data"]))
