"""`featpipe run` killed (SIGKILL) at random moments or stopped (SIGINT, SIGTERM), then run
again: the results (all but timings) and the report's tables equal an uninterrupted run's."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from featpipe.cli import main
from featpipe.data.arrays import ArraySource
from featpipe.report import read_results

CHILD = Path(__file__).resolve().parent / "run_child.py"
ROOT = Path(__file__).resolve().parents[1]
LIMITS = {"train": 120, "val": 60, "test": 90}
PIPELINE = """
name = "k"
n_boot = 100
device = "cpu"
[source]
data = "digits"
limits = {{ train = {train}, val = {val}, test = {test} }}
[features]
backbones = ["toy"]
image_size = 16
batch_size = 32
workers = 0
cache_dir = "CACHE"
[probes]
heads = ["logreg", "knn"]
grids.logreg = {{ C = [0.1, 1.0] }}
[finetune]
modes = ["full"]
epochs = 2
batch_size = 32
augment = "none"
""".format(**LIMITS)
RESUME = "run the same command to resume"


def write_pipeline(folder: Path) -> Path:
    path = folder / "k.toml"
    path.write_text(PIPELINE.replace("CACHE", str(folder / "cache")))
    return path


def child(toml: Path, out: Path, phase: str, n: int, signal: str = "SIGKILL"):
    argv = [sys.executable, str(CHILD), phase, str(n), signal, "--"]
    argv += ["run", str(toml), "--out", str(out), "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    print(f"{phase} {n} {signal}: exit {done.returncode}; {done.stderr.strip()[-300:]}")
    return done


def stable(row: dict) -> dict:
    """A results row without what changes from run to run: timings, time stamps, paths."""
    row = {k: v for k, v in row.items() if k not in ("created", "cost")}
    row["provenance"] = {
        **row["provenance"],
        "store": (row["provenance"]["store"] or {}).get("key"),
    }
    if row["history"]:
        timed = ("seconds", "images_per_s")
        row["history"] = [{k: v for k, v in h.items() if k not in timed} for h in row["history"]]
    return row


def tables(md: str) -> list[list[list[str]]]:
    """The report's tables without timing columns, plus its comparison sentences without the
    cost ratio; the provenance table (store paths) is left out."""
    out, rows = [], []
    for line in [*md.splitlines(), ""]:
        if line.startswith("|"):
            if not line.startswith("|---"):
                rows.append([c.strip() for c in line.strip("|").split("|")])
            continue
        if rows and rows[0] != ["item", "value"]:
            keep = [i for i, h in enumerate(rows[0]) if not re.search(r"( s|/s)$|MiB", h)]
            out.append([[r[i] for i in keep] for r in rows])
        rows = []
    sentences = [re.sub(r" at [\d.]+ times the cost", "", ln) for ln in md.splitlines()]
    return [*out, [[s] for s in sentences if re.fullmatch(r"- .* \(seed \d+\)\.", s)]]


@pytest.mark.slow
def test_killed_and_stopped_runs_resume_to_the_same_results(tmp_path, monkeypatch, capsys):
    seed = int(os.environ.get("FEATPIPE_KILL_SEED", random.randrange(10_000)))
    rng = random.Random(seed)
    print(f"kill moments drawn with FEATPIPE_KILL_SEED={seed}")

    # The uninterrupted run, counting image loads: extraction reads each image once, and so do
    # the report's data checks (a perceptual hash of each) at the end; the fine-tune reads the
    # rest.
    (tmp_path / "clean").mkdir()
    loads, real_load = [0], ArraySource.load

    def counting(self, index):
        loads[0] += 1
        return real_load(self, index)

    monkeypatch.setattr(ArraySource, "load", counting)
    clean = tmp_path / "clean" / "run"
    assert (
        main(["run", str(write_pipeline(tmp_path / "clean")), "--out", str(clean), "--quiet"]) == 0
    )
    monkeypatch.undo()
    n_images = sum(LIMITS.values())
    tune_loads = loads[0] - 2 * n_images
    capsys.readouterr()

    (tmp_path / "hit").mkdir()
    toml, out = write_pipeline(tmp_path / "hit"), tmp_path / "hit" / "run"
    # Each moment is drawn where the work it interrupts is still to do: the fine-tune runs
    # afresh at the first of its two moments, and any resume ends by predicting the test split.
    moments = [
        ("load", rng.randint(1, n_images), "SIGKILL"),  # during extraction
        ("probe", rng.randint(1, 2), "SIGKILL"),  # a head fitted, its row not written yet
        ("load", rng.randint(1, tune_loads), "SIGKILL"),  # in a fine-tuning epoch
        ("load", rng.randint(1, LIMITS["test"]), "SIGTERM"),  # the resumed fine-tune
        ("append", 1, "SIGKILL"),  # half a results row on disk
        ("report", 1, "SIGKILL"),  # report.md written, report.html not yet
    ]
    for phase, n, signal in moments:
        done = child(toml, out, phase, n, signal)
        if signal == "SIGKILL":
            assert done.returncode == -9, done.stderr
        else:
            assert done.returncode == 143, done.stderr
            last = done.stderr.strip().splitlines()[-1]
            assert re.fullmatch(
                rf"featpipe run: interrupted: 2 of 3 method runs done.*; {RESUME}", last
            )
        if phase == "report":  # the row cut in half is dropped, with one plain warning line
            warning = r"^featpipe: warning: \S+results\.jsonl:3: ignoring a partial last line"
            assert re.search(warning, done.stderr, re.M) and "UserWarning" not in done.stderr
    assert main(["run", str(toml), "--out", str(out), "--quiet"]) == 0

    expected = {(r["method"], r["seed"]): stable(r) for r in read_results(clean / "results.jsonl")}
    got = {(r["method"], r["seed"]): stable(r) for r in read_results(out / "results.jsonl")}
    assert got.keys() == expected.keys()
    for key, row in expected.items():
        assert got[key] == row, key
    assert tables((out / "report.md").read_text()) == tables((clean / "report.md").read_text())
