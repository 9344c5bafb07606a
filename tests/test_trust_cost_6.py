"""The cost of LP-FT when its probe reads the run's feature store: the store's extraction is
part of what LP-FT cost, as it is of every probe on that store."""

from __future__ import annotations

import pytest
from test_run_plan import cache, run, toml  # noqa: F401  (fixtures)

from featpipe.report import read_results
from featpipe.report.summary import row_cost


@pytest.mark.slow  # one short LP-FT of the toy backbone
def test_lpft_reading_the_store_counts_its_extraction(toml, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    sets = ['finetune.modes=["lpft"]', "finetune.epochs=1", "finetune.workers=0"]
    assert run(toml, out, *sets) == 0
    rows = {r["kind"]: r for r in read_results(out / "results.jsonl")}
    probe, lpft = rows["probe"], rows["finetune"]
    assert lpft["history"][0]["probe"]["features"] == probe["provenance"]["store"]["path"]
    extraction = probe["cost"]["extraction_seconds"]
    assert extraction > 0
    assert lpft["cost"]["extraction_seconds"] == extraction
    assert lpft["provenance"]["store"] == probe["provenance"]["store"]
    total = extraction + lpft["cost"]["fit_seconds"] + lpft["cost"]["predict_seconds"]
    assert row_cost(lpft, "total_seconds") == pytest.approx(total)
    # Its test images run through the fine-tuned network: no extraction share per image.
    n_test = len(lpft["test"]["y_true"])
    assert lpft["cost"]["images_per_s"] == pytest.approx(n_test / lpft["cost"]["predict_seconds"])
