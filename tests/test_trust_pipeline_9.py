"""A pipeline's declarations mean what they say: one fine-tuning mode written two ways is
refused, a grid for a head the pipeline does not run is warned of, and a fine-tune recomputed
over other left-out images is announced as such."""

from __future__ import annotations

import pytest
import toy_backbone  # noqa: F401  (registers the 'toy' backbone)

from featpipe.errors import ConfigError
from featpipe.pipeline import config_from_dict, run_pipeline


def pipeline(tmp_path, probes: dict | None = None, **finetune):
    return config_from_dict(
        {
            "name": "nine",
            "out": str(tmp_path / "run"),
            "n_boot": 10,
            "device": "cpu",
            "source": {"data": "digits", "limits": {"train": 60, "val": 30, "test": 30}},
            "features": {
                "backbones": ["toy"],
                "image_size": 16,
                "workers": 0,
                "cache_dir": str(tmp_path / "cache"),
            },
            "probes": probes or {"heads": ["knn"]},
            "finetune": {"workers": 0, **finetune},
        }
    )


@pytest.mark.parametrize(
    ("modes", "match"),
    [
        (["partial:2", "partial:02"], r"finetune.modes\[1\] = 'partial:02' is the mode of "
         r"finetune.modes\[0\] = 'partial:2' \('partial:2'\); list each mode once"),
        (["full", "head", " full"], r"finetune.modes\[2\] = ' full' is the mode of "
         r"finetune.modes\[0\] = 'full'"),
    ],
)  # fmt: skip
def test_one_mode_written_two_ways_is_refused(tmp_path, modes, match):
    # Before: both passed the duplicate check (it compares the text) and parse to one mode,
    # so the same fine-tune trained twice, as 'fine-tuning (partial:2)' and
    # 'fine-tuning (partial:02)', two methods of the report.
    with pytest.raises(ConfigError, match=match):
        pipeline(tmp_path, modes=modes)


def test_a_grid_for_a_head_the_pipeline_does_not_run_is_warned_of(tmp_path):
    # Before: the logreg grid (a typo'd or forgotten head) was ignored without a word.
    grids = {"knn": {"n_neighbors": [1]}, "logreg": {"C": [1.0]}, "mlp": {"alpha": [0.1]}}
    config = pipeline(tmp_path, {"heads": ["knn"], "grids": grids})
    with pytest.warns(UserWarning) as caught:
        run_pipeline(config, progress=False, log=lambda _: None)
    said = [str(w.message) for w in caught if "probes.grids" in str(w.message)]
    assert said == [
        "probes.grids.logreg, probes.grids.mlp are not used: the pipeline runs no such head "
        "(probes.heads: knn). Add the head to probes.heads, or remove its grid."
    ]
