"""Pipeline trust checks, session 13: what a fine-tune-only pipeline refuses at the check."""

from __future__ import annotations

import pytest
import toy_backbone  # noqa: F401  (registers the 'toy' backbone)

from featpipe.errors import ConfigError
from featpipe.pipeline import config_from_dict, run_pipeline


def _finetune_only(tmp_path, modes, source):
    return config_from_dict({
        "name": "twelve", "out": str(tmp_path / "run"), "device": "cpu",
        "source": {"data": "digits", "limits": {"train": 30, "val": 15, "test": 15}, **source},
        "features": {"backbones": ["toy"], "workers": 0, "cache_dir": str(tmp_path / "c")},
        "probes": {"heads": []},
        "finetune": {"modes": modes, "epochs": 1, "batch_size": 4, "workers": 0},
    })  # fmt: skip


def _refused(config, match, tmp_path):
    with pytest.raises(ConfigError, match=match):
        run_pipeline(config, progress=False, log=lambda _: None)
    assert not (tmp_path / "run").exists() and not (tmp_path / "c").exists()


@pytest.mark.filterwarnings("ignore:Subsampling")  # classes without train rows
@pytest.mark.parametrize(
    ("modes", "source", "said"),
    [
        (["full"], {"train_sizes": [1, 10]}, r"source.train_sizes \[1\]: one train image"),
        (["full"], {"limits": {"train": 1}}, r"train split holds 1 image of 1 class"),
        (["lpft"], {"train_sizes": [1, 10]}, r"source.train_sizes \[1\]: one train image"),
        (["lpft"], {"limits": {"train": 1}}, r"train split holds 1 image of 1 class"),
    ],
)
def test_a_finetune_only_pipeline_on_one_train_image_is_refused_at_the_check(
    tmp_path, modes, source, said
):
    # Before: refused at the fine-tune's start (batch of one through training batch norm,
    # LP-FT's probe on one class), after plan.json was written (and LP-FT's extraction).
    _refused(_finetune_only(tmp_path, modes, source), said, tmp_path)


def test_one_train_image_where_batch_norm_is_frozen_passes_the_check(tmp_path):
    from featpipe.data import open_source
    from featpipe.pipeline.validate import check_models, finetune_rows

    # (check_sizes refuses 1 train image as one class since session 13's round 2: this checks
    # check_models alone, whose batch-of-one rule reaches several ranks too.)
    config = _finetune_only(tmp_path, ["head", "bn"], {"train_sizes": [1, 10]})
    source = open_source("digits")
    assert finetune_rows(config, source) == (1, 10)
    check_models(config, finetune_rows(config, source))


def test_a_config_reads_back_from_its_config_json(tmp_path):
    # Before: "source.val_fraction must be float; got NoneType None" (to_json writes the None
    # of keys left out, which config_from_dict refused).
    import json

    from conftest import digits_config

    finetune = {"modes": ["head", "partial:1"], "grid": {"lr": [0.1, 0.01]}, "image_size": None}
    probes = {"heads": ["knn", "logreg"], "grids": {"logreg": {"C": [0.1, 1.0]}}}
    config = digits_config(tmp_path, "back", probes=probes, finetune=finetune)
    again = config_from_dict(json.loads(json.dumps(config.to_json())))
    assert again == config
    with pytest.raises(ConfigError, match=r"source\.split_seed must be integer; got NoneType"):
        config_from_dict({**config.to_json(), "source": {"data": "digits", "split_seed": None}})
