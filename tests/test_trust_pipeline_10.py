"""A pipeline's run folder and reuse rules hold under user mistakes: a folder in the place of
results.jsonl is named in one line, rows made under on_error = "skip" are not reused once the
pipeline says "fail"; heads refuse settings that fit nonsense (an infinite gamma, C or k), and a
saved head is not refused for a field of its layer that only one featpipe version records."""

from __future__ import annotations

import pytest
import test_trust_pipeline_9  # noqa: F401  (registers 'toy_white_nan9': NaN on white images)
import toy_backbone  # noqa: F401  (registers the 'toy' backbone)

from featpipe.pipeline import config_from_dict, run_pipeline
from featpipe.report import read_results
from featpipe.report.results import ResultsFormatError


def digits_pipeline(tmp_path, probes: dict | None = None):
    return config_from_dict(
        {
            "name": "ten",
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
        }
    )


def test_a_folder_named_results_jsonl_is_refused_in_one_line(tmp_path):
    # Before: IsADirectoryError, a traceback from read_results (featpipe run and report alike).
    (tmp_path / "run" / "results.jsonl").mkdir(parents=True)
    with pytest.raises(ResultsFormatError, match=r"results.jsonl is a folder; .* Move or rename"):
        run_pipeline(digits_pipeline(tmp_path), progress=False, log=lambda _: None)
    with pytest.raises(ResultsFormatError, match="is a folder"):
        read_results(tmp_path / "run" / "results.jsonl")
