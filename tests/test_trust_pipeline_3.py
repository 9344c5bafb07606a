"""`featpipe run` re-runs: config lists that repeat an entry, two runs into one run folder at
once, and results files damaged beyond an interrupted write."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_report import make_rows
from test_run_plan import PIPELINE

from featpipe.errors import ConfigError
from featpipe.pipeline import config_from_dict
from featpipe.report import append_result, read_results
from featpipe.report.results import ResultsFormatError

TESTS = Path(__file__).resolve().parent
BASE = {"source": {"data": "digits"}, "features": {"backbones": ["toy"]}}


def config(**tables) -> dict:
    raw = json.loads(json.dumps(BASE))
    for name, value in tables.items():
        raw.setdefault(name, {}).update(value)
    return raw


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        # Each ran the same jobs twice and wrote two rows with one (method, seed, hash).
        (config(probes={"heads": ["knn", "knn"]}), r"probes.heads lists 'knn' twice"),
        (config(features={"backbones": ["toy", "toy"]}), r"features.backbones lists 'toy' tw"),
        (config(probes={"layers": ["pooled", "pooled"]}), r"probes.layers lists 'pooled' tw"),
        (config(finetune={"modes": ["head", "head"]}), r"finetune.modes lists 'head' twice"),
        (
            config(finetune={"modes": ["head"], "backbones": ["toy", "toy"]}),
            r"finetune.backbones lists 'toy' twice",
        ),
        # Ran no fine-tune at all, silently.
        (
            config(finetune={"modes": ["head"], "backbones": []}),
            r"finetune.backbones is empty, so finetune.modes would run nothing",
        ),
        # Accepted, then failed at extraction, after config.json and plan.json were written.
        (config(features={"workers": -1}), r"features.workers must be >= 0; got -1"),
    ],
)
def test_lists_that_repeat_an_entry_and_bad_workers_are_refused(raw, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict(raw)


# test_run_plan's pipeline, smaller and with two probes.
SMALL = ["n_boot=40", "source.limits={train=60, val=30, test=30}"]
SMALL += ['probes.heads=["knn", "logreg"]', "probes.grids.logreg={C=[1.0]}"]


def run_args(tmp_path, *overrides: str) -> list[str]:
    """`featpipe run` arguments for that pipeline, its cache and run folder in ``tmp_path``."""
    toml = tmp_path / "two.toml"
    toml.write_text(PIPELINE.replace("CACHE", str(tmp_path / "cache")))
    sets = [arg for o in [*SMALL, *overrides] for arg in ("--set", o)]
    return ["run", str(toml), "--out", str(tmp_path / "run"), "--quiet", *sets]


# `featpipe run` whose every probe takes 2 s more: long enough for two runs to overlap.
CHILD = f"""
import sys, time
sys.path.insert(0, {str(TESTS)!r})
import toy_backbone
import featpipe.heads
from featpipe.cli import main
fit = featpipe.heads.select_and_fit
def slow(*args, **kwargs):
    time.sleep(2)
    return fit(*args, **kwargs)
featpipe.heads.select_and_fit = slow
sys.exit(main(sys.argv[1:]))
"""


def test_two_runs_into_one_folder_take_turns(tmp_path):
    # Before: both ran every job and appended each row twice; the one writing the report
    # second could fail with a traceback (FileNotFoundError on report.md.tmp).
    out = tmp_path / "run"
    argv = [sys.executable, "-c", CHILD, *run_args(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(TESTS.parent)}
    runs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                             text=True) for _ in range(2)]  # fmt: skip
    logs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], logs
    rows = read_results(out / "results.jsonl")
    assert sorted(r["method"] for r in rows) == ["toy/knn@pooled", "toy/logreg@pooled"]
    stdout = "".join(log[0] for log in logs)
    assert stdout.count("reusing finished") == 2  # the second run waited, then reused both
    assert "in use by pid" in "".join(log[1] for log in logs)  # and said whom it waited for


def test_a_results_line_that_is_not_utf8_is_one_clear_error(tmp_path):
    # Before: UnicodeDecodeError, a traceback, for `featpipe run` and `featpipe report`.
    rows = make_rows()[:3]
    path = tmp_path / "results.jsonl"
    for row in rows:
        append_result(path, row)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + lines[1][:40] + b"\xff" + lines[1][41:] + lines[2])
    with pytest.raises(ResultsFormatError, match=r"results.jsonl:2: .*not UTF-8.* Remove that"):
        read_results(path)

    # As the cut-off last line of a torn write, it is dropped like any partial line.
    path.write_bytes(lines[0] + lines[1] + lines[2][:40] + b"\xff")
    with pytest.warns(UserWarning, match="partial last line"):
        assert len(read_results(path, repair=True)) == 2
    assert path.read_bytes() == lines[0] + lines[1]


def test_an_empty_source_data_is_refused():
    # Before: accepted and read as the working directory ("Class folder 'benchmarks' ...").
    with pytest.raises(ConfigError, match=r"source.data is empty"):
        config_from_dict(config(source={"data": ""}))


def test_a_source_without_test_images_fails_before_any_compute(tmp_path, capsys):
    # Before: the features were extracted, then the first probe said there was no test row.
    from featpipe.cli import main

    sets = ["source.test_fraction=0", "source.limits={train=60, val=30}"]
    assert main(run_args(tmp_path, *sets)) == 2
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()
    assert "no test images" in capsys.readouterr().err


def test_a_cache_dir_that_cannot_take_files_fails_before_any_compute(tmp_path, capsys):
    # Before: found at extraction, after config.json and plan.json were written, in a message
    # naming --cache-dir/--out rather than the key.
    from featpipe.cli import main

    (tmp_path / "taken").write_text("a file, not a folder")
    sets = [f"features.cache_dir={str(tmp_path / 'taken' / 'cache')!r}"]
    assert main(run_args(tmp_path, *sets)) == 2
    err = capsys.readouterr().err
    assert "features.cache_dir = " in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
