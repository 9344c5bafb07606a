"""The pipeline's log counts in the singular: "1 method run", never "1 method runs"."""

from __future__ import annotations

import toy_backbone  # noqa: F401  (registers the 'toy' backbone)
from test_trust_pipeline_8 import pipeline

from featpipe.pipeline import run_pipeline
from featpipe.pipeline.runner import _interrupted


def test_the_log_of_a_one_method_run_counts_it_in_the_singular(tmp_path):
    # Before: "edits: 1 method runs, 0 already finished" and, interrupted, "0 of 1 method runs".
    said: list[str] = []
    run_pipeline(pipeline(tmp_path, ["toy"]), progress=False, log=said.append)
    assert any("edits: 1 method run, 0 already finished" in line for line in said), said
    stop = _interrupted(KeyboardInterrupt(), 0, 1)
    assert "interrupted: 0 of 1 method run done; run the same command to resume" in str(stop)
    assert "0 of 2 method runs done" in str(_interrupted(KeyboardInterrupt(), 0, 2))
