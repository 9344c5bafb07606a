"""A pipeline's check refuses before extraction what would fail after it: a fine-tuning grid
whose batch_size trains batches of one image through batch norm, and two stored layers that
are the same features ('stage1' and 'stage1:avg')."""

from __future__ import annotations

import pytest
import toy_backbone  # noqa: F401  (registers the 'toy' backbone)

from featpipe.errors import ConfigError
from featpipe.pipeline import config_from_dict, run_pipeline


def _config(tmp_path, features=None, finetune=None, probes=None):
    return config_from_dict({
        "name": "eleven", "out": str(tmp_path / "run"), "device": "cpu",
        "source": {"data": "digits", "limits": {"train": 30, "val": 15, "test": 15}},
        "features": {"backbones": ["toy"], "workers": 0, "cache_dir": str(tmp_path / "c"),
                     **(features or {})},
        "probes": {"heads": ["knn"], **(probes or {})},
        "finetune": {"workers": 0, **(finetune or {})},
    })  # fmt: skip


def _refused(config, match, tmp_path):
    with pytest.raises(ConfigError, match=match):
        run_pipeline(config, progress=False, log=lambda _: None)
    assert not (tmp_path / "run").exists() and not (tmp_path / "c").exists()


def test_a_finetune_grid_batch_of_one_through_batch_norm_is_refused_before_extraction(tmp_path):
    # Before: only finetune.batch_size was checked; the grid's 1 failed after extraction.
    finetune = {"modes": ["full"], "epochs": 1, "batch_size": 4, "grid": {"batch_size": [1, 4]}}
    said = r"finetune.modes\[0\] \('full' on toy\): finetune.grid candidate \{'batch_size': 1\}: "
    said += "batch_size 1 trains batches of 1 image"
    _refused(_config(tmp_path, finetune=finetune), said, tmp_path)


def test_a_finetune_grid_batch_of_one_where_batch_norm_is_frozen_passes_the_check(tmp_path):
    from featpipe.pipeline.validate import check_models

    finetune = {"modes": ["bn"], "epochs": 1, "batch_size": 4, "grid": {"batch_size": [1, 4]}}
    check_models(_config(tmp_path, finetune=finetune))


def test_a_layer_and_its_default_pooling_are_refused_before_extraction(tmp_path):
    # Before: refused only when the store was laid out, at extraction.
    features = {"layers": ["stage1", "stage1:avg"]}
    _refused(_config(tmp_path, features=features), r"'stage1' and 'stage1:avg' of toy", tmp_path)


def test_one_image_per_rank_under_sync_bn_passes_the_check(tmp_path, monkeypatch):
    # Before: refused, though SyncBatchNorm normalises over every rank's image (as FineTuner
    # and fit_grid accept it).
    from featpipe import distributed
    from featpipe.distributed.ranks import Ranks
    from featpipe.pipeline.validate import check_models

    monkeypatch.setattr(distributed, "current_ranks", lambda: Ranks(world_size=2))
    finetune = {"modes": ["full"], "epochs": 1, "batch_size": 2, "sync_bn": True}
    check_models(_config(tmp_path, finetune=finetune))
    with pytest.raises(ConfigError, match=r"finetune.batch_size 2 \(2 ranks, 1 image each\)"):
        check_models(_config(tmp_path, finetune={**finetune, "sync_bn": False}))


def test_a_finetune_grid_image_size_the_backbone_refuses_is_refused_before_extraction(tmp_path):
    # Before: only finetune.image_size was tried on the backbone; the grid's failed after
    # extraction and probes.
    finetune = {"modes": ["head"], "epochs": 1, "batch_size": 4, "grid": {"image_size": [9999]}}
    said = r"finetune.modes\[0\] \('head' on toy\): finetune.grid candidate \{'image_size': 9999\}"
    _refused(_config(tmp_path, finetune=finetune), said + ": image size must be from 8", tmp_path)


@pytest.mark.filterwarnings("ignore:Subsampling")  # classes without train rows
@pytest.mark.parametrize(
    ("source", "said"),
    [
        ({"train_sizes": [1, 10]}, r"source.train_sizes \[1\]: one train image is one class"),
        ({"limits": {"train": 1}}, r"train split holds 1 image of 1 class;"),
    ],
)
def test_train_images_of_one_class_are_refused_before_extraction(tmp_path, source, said):
    # Before: the first head refused them, after extraction.
    config = config_from_dict({
        "name": "eleven", "out": str(tmp_path / "run"), "device": "cpu",
        "source": {"data": "digits", "limits": {"train": 30, "val": 15, "test": 15}, **source},
        "features": {"backbones": ["toy"], "workers": 0, "cache_dir": str(tmp_path / "c")},
        "probes": {"heads": ["knn"]},
    })  # fmt: skip
    _refused(config, said, tmp_path)
