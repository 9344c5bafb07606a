"""A pipeline's run folder and reuse rules hold under user mistakes: a folder in the place of
results.jsonl is named in one line, rows made under on_error = "skip" are not reused once the
pipeline says "fail"; heads refuse settings that fit nonsense (an infinite gamma, C or k), and a
saved head is not refused for a field of its layer that only one featpipe version records."""

from __future__ import annotations

import json

import pytest
import test_trust_pipeline_9  # noqa: F401  (registers 'toy_white_nan9': NaN on white images)
import toy_backbone  # noqa: F401  (registers the 'toy' backbone)
from conftest import WHITE, make_white_folder

from featpipe.errors import ImageReadError
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


def test_rows_that_left_images_out_are_not_reused_under_on_error_fail(tmp_path):
    # Before: the kNN row made under "skip" (2 white images left out) was reused under "fail",
    # where `featpipe extract` refuses the very store it came from; on_error is not hashed.
    root = make_white_folder(tmp_path / "images")

    def run(on_error: str) -> list[str]:
        config = config_from_dict({
            "name": "skips", "n_boot": 10, "device": "cpu", "out": str(tmp_path / "run"),
            "source": {"data": str(root)},
            "features": {"backbones": ["toy_white_nan9"], "batch_size": 8, "workers": 0,
                         "cache_dir": str(tmp_path / "c"), "on_error": on_error},
            "probes": {"heads": ["knn"]},
        })  # fmt: skip
        said: list[str] = []
        run_pipeline(config, progress=False, log=said.append)
        return said

    run("skip")
    said: list[str] = []
    with pytest.raises(ImageReadError, match=rf"leaves out 2 images .*{WHITE[0]}"):
        said = run("fail")
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert plan["methods"][0]["all_images"] is True
    # Back under "skip" the row is reused again (a row made without skips always is).
    said = run("skip")
    assert "reusing finished kNN on layer pooled (seed 0)" in said
    assert len(read_results(tmp_path / "run" / "results.jsonl")) == 1


def test_a_reused_row_that_left_images_out_is_announced_so(tmp_path):
    root = make_white_folder(tmp_path / "images")
    base = {
        "name": "skips", "n_boot": 10, "device": "cpu", "out": str(tmp_path / "run"),
        "source": {"data": str(root)},
        "features": {"backbones": ["toy_white_nan9"], "batch_size": 8, "workers": 0,
                     "cache_dir": str(tmp_path / "c"), "on_error": "skip"},
        "probes": {"heads": ["knn"]},
    }  # fmt: skip
    run_pipeline(config_from_dict(base), progress=False, log=lambda _: None)
    said: list[str] = []
    base["features"]["on_error"] = "fail"
    with pytest.raises(ImageReadError):
        run_pipeline(config_from_dict(base), progress=False, log=said.append)
    assert (
        "recomputing kNN on layer pooled (seed 0): its row was made without 2 images "
        '(on_error = "skip"), where on_error is now "fail"; that row stays in results.jsonl '
        "as history"
    ) in said
