"""`featpipe run` and `featpipe report` on a tiny pipeline (toy backbone, a few hundred digits):
reports hold only the rows of the current plan, seeds reach the heads that use them, the
whole plan is checked before any compute, interruptions say how far the run got."""

from __future__ import annotations

import json
import re
import signal
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_image_folder, record_calls

from featpipe.cli import _plain_warnings, main
from featpipe.heads import select_and_fit
from featpipe.interrupt import Interrupted
from featpipe.report import PLAN_FILE, read_results
from featpipe.store import FeatureStore

PIPELINE = """
name = "t"
n_boot = 50
device = "cpu"
[source]
data = "digits"
limits = { train = 200, val = 100, test = 150 }
[features]
backbones = ["toy"]
image_size = 16
workers = 0
cache_dir = "CACHE"
[probes]
heads = ["knn"]
"""


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One feature store for the whole module: every test here reads the same digits."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def toml(tmp_path, cache) -> Path:
    path = tmp_path / "t.toml"
    path.write_text(PIPELINE.replace("CACHE", str(cache)))
    return path


def run(toml: Path, out: Path, *overrides: str) -> int:
    sets = [arg for o in overrides for arg in ("--set", o)]
    return main(["run", str(toml), "--out", str(out), "--quiet", *sets])


def table_row(md: str, label: str) -> list[str]:
    """The cells of a method's line in the report's results table."""
    results = md.split("## Results", 1)[1].split("\n## ", 1)[0]
    (line,) = [ln for ln in results.splitlines() if ln.startswith(f"| {label} |")]
    return [c.strip() for c in line.strip("|").split("|")]


def test_reports_use_only_the_rows_of_the_current_plan(toml, tmp_path, capsys):
    # The example. Selection by CV (no val split) makes the seed matter for kNN.
    out = tmp_path / "run"
    cv = ["source.val_fraction=0", "source.limits={train=200, test=150}"]
    first = [*cv, "probes.grids.knn={n_neighbors=[1]}", "seeds=[0, 1]"]
    second = [*cv, "probes.grids.knn={n_neighbors=[15]}", "seeds=[0]"]
    assert run(toml, out, *first) == 0
    cells = table_row((out / "report.md").read_text(), "kNN on layer pooled")
    assert cells[1].startswith("0, 1") and cells[-1].split(",")[0] == "n_neighbors=1"

    assert run(toml, out, *second) == 0
    md = (out / "report.md").read_text()
    cells = table_row(md, "kNN on layer pooled")
    new = read_results(out / "results.jsonl")[-1]
    # Before: seeds "0, 1", the new seed 0 averaged with the old seed 1.
    assert cells[1] == "0" and cells[-1].split(",")[0] == "n_neighbors=15"
    assert cells[2].startswith(f"{100 * new['metrics']['top1']:.1f} (")
    assert "also holds 2 rows of earlier configurations" in md
    rebuilt = tmp_path / "rebuilt.md"
    rebuilt.write_bytes(md.encode())
    assert main(["report", str(out)]) == 0  # from the plan saved in the run folder
    assert (out / "report.md").read_text() == rebuilt.read_text()

    capsys.readouterr()
    assert run(toml, out, *first) == 0
    assert capsys.readouterr().out.count("reusing finished") == 2
    md = (out / "report.md").read_text()
    cells = table_row(md, "kNN on layer pooled")
    assert cells[1].startswith("0, 1") and cells[-1].split(",")[0] == "n_neighbors=1"  # before: =15
    assert "also holds 1 row of earlier configurations" in md
    assert len(read_results(out / "results.jsonl")) == 3  # history is kept

    # A run folder from before plan.json: every method and seed's latest row, with a note.
    (out / PLAN_FILE).unlink()
    assert main(["report", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "has no plan.json" in md and "may mix configurations" in md


@pytest.mark.filterwarnings("ignore:Stochastic Optimizer")
def test_deterministic_heads_run_once_and_seeds_reach_the_others(toml, tmp_path):
    out = tmp_path / "run"
    mlp = "probes.grids.mlp={alpha=[0.0001], hidden_layer_sizes=[[16]], max_iter=[30]}"
    assert run(toml, out, 'probes.heads=["knn", "mlp"]', mlp, "seeds=[3, 4]") == 0
    rows = read_results(out / "results.jsonl")
    assert [(r["head"], r["seed"], r["deterministic"]) for r in rows] == [
        ("knn", 3, True),
        ("mlp", 3, False),
        ("mlp", 4, False),
    ]
    md = (out / "report.md").read_text()
    knn = table_row(md, "kNN on layer pooled")
    assert knn[1] == "3 (deterministic)" and "±" not in knn[2]
    plan = json.loads((out / PLAN_FILE).read_text())
    assert [m["seed"] for m in plan["methods"]] == [3, 3, 4]


def test_seed_and_device_reach_the_head():
    rng = np.random.default_rng(0)
    data = {
        split: (rng.normal(size=(n, 5)), np.arange(n) % 3)
        for split, n in (("train", 60), ("val", 30), ("test", 30))
    }
    grid = {"alpha": [1e-4], "hidden_layer_sizes": [(8,)], "max_iter": [20]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 20 iterations do not converge
        assert select_and_fit("mlp", data, grid=grid, seed=7).estimator.random_state == 7
        # Without a seed the head keeps its own (the default 0, or what the caller set).
        assert select_and_fit("mlp", data, grid=grid).estimator.random_state == 0
    fitted = select_and_fit("logreg", data, grid={"C": [1.0]}, device="cpu").estimator
    assert fitted.device == "cpu" and fitted.classifier_.device == "cpu"
    # The RBF SVM's training subsample is drawn with the seed.
    small = {"C": [1.0], "max_train_samples": [30]}
    svs = [
        select_and_fit("rbf_svm", data, grid=small, seed=s).estimator.classifier_.support_vectors_
        for s in (0, 0, 1)
    ]
    assert np.array_equal(svs[0], svs[1]) and not np.array_equal(svs[0], svs[2])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_cpu_keeps_logistic_regression_off_the_gpu():
    rng = np.random.default_rng(0)
    data = {s: (rng.normal(size=(60, 5)), np.arange(60) % 3) for s in ("train", "val", "test")}
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    select_and_fit("logreg", data, grid={"C": [0.1, 1.0]}, device="cpu")
    assert torch.cuda.max_memory_allocated() <= before  # before the fix: fitted on cuda
    fitted = select_and_fit("logreg", data, grid={"C": [1.0]}, device="cuda").estimator
    assert fitted.classifier_.device == "cuda"


def test_pipeline_device_reaches_logistic_regression(toml, tmp_path, monkeypatch):
    from featpipe.heads import torch_logreg

    seen = record_calls(monkeypatch, torch_logreg, "resolve_device")
    heads = 'probes.heads=["logreg"]'
    assert run(toml, tmp_path / "run", heads, "probes.grids.logreg={C=[1.0]}") == 0
    # Before: "auto" reached the head, which picks CUDA where there is one.
    assert seen and set(seen) == {"cpu"}


def test_rbf_svm_predictions_are_its_predict(toml, tmp_path):
    out = tmp_path / "run"
    assert run(toml, out, 'probes.heads=["rbf_svm"]', "probes.grids.rbf_svm={C=[0.1]}") == 0
    (row,) = read_results(out / "results.jsonl")
    store = FeatureStore(row["provenance"]["store"]["path"])
    result = select_and_fit("rbf_svm", store, "pooled", grid={"C": [0.1]}, seed=0)
    ties = int(np.sum(result.test_pred != result.test_scores.argmax(axis=1)))
    print(f"predict differs from the argmax of decision_function on {ties} test images")
    assert ties > 0  # the case this test is about
    assert row["test"]["y_pred"] == result.test_pred.tolist()
    assert row["metrics"]["top1"] == result.test_accuracy


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (
            ['probes.heads=["logreg"]', "probes.grids.logreg={C=[1.0, -1.0]}"],
            r"probes\.grids\.logreg\.C\[1\] = -1\.0 is not a valid setting of head 'logreg': "
            r"C must be a positive",
        ),
        (
            ["probes.grids.knn={n_neigbors=[3]}"],
            r"probes\.grids\.knn\.n_neigbors: head 'knn' has no parameter 'n_neigbors'\. "
            r"Did you mean: 'n_neighbors'\?",
        ),
        (
            ['probes.heads=["rbf_svm"]', 'probes.grids.rbf_svm={C=["big"]}'],
            r"probes\.grids\.rbf_svm\.C\[0\] = 'big' is not a valid setting",
        ),
        (["probes.grids.knn={n_neighbors=[0]}"], r"probes\.grids\.knn\.n_neighbors\[0\] = 0"),
        (["source.data=/nonexistent/images"], r"Cannot open image source '/nonexistent/images'"),
        (['features.layers=["stage9"]'], r"features\.layers of toy: Unknown layer 'stage9'"),
        (['features.backbones=["toyy"]'], r"features\.backbones\[0\]: Unknown backbone 'toyy'"),
        (
            ['finetune.modes=["full", "partial:5"]'],
            r"finetune\.modes\[1\] \('partial:5' on toy\): .*freezes more stages",
        ),
        (['finetune.modes=["full"]', "finetune.dropout=1.5"], r"finetune\.modes\[0\].*dropout"),
    ],
)
def test_a_bad_plan_fails_before_any_compute(toml, tmp_path, capsys, overrides, match):
    out, cache = tmp_path / "run", tmp_path / "fresh-cache"
    start = time.perf_counter()
    assert run(toml, out, f"features.cache_dir={cache}", *overrides) == 2
    seconds = time.perf_counter() - start
    err = capsys.readouterr().err
    print(f"failed after {seconds:.2f} s: {err.strip()}")
    assert re.search(match, err), err
    assert not cache.exists() and not out.exists()  # no store, no run folder


def test_interrupted_run_says_how_far_it_got(toml, tmp_path, capsys, monkeypatch):
    import featpipe.heads

    out = tmp_path / "run"
    heads = 'probes.heads=["knn", "logreg"]'
    # A step that knows its own progress (an extraction's chunks) keeps it in the message.
    inner = "interrupted: 3 of 10 chunks done; run the same command to resume"
    cases = [
        (Interrupted(signal.SIGINT), 130, ""),
        (Interrupted(signal.SIGTERM, inner), 143, " (3 of 10 chunks done)"),
    ]
    for stop, code, detail in cases:
        real, calls = featpipe.heads.select_and_fit, []

        def stop_second(*args, real=real, calls=calls, stop=stop, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                raise stop
            return real(*args, **kwargs)

        monkeypatch.setattr(featpipe.heads, "select_and_fit", stop_second)
        assert run(toml, out, heads, "probes.grids.logreg={C=[1.0]}") == code
        assert capsys.readouterr().err.strip() == (
            f"featpipe run: interrupted: 1 of 2 method runs done{detail}; run the same command "
            "to resume"
        )
        monkeypatch.undo()
        (out / "results.jsonl").unlink()
    assert run(toml, out, heads, "probes.grids.logreg={C=[1.0]}") == 0
    assert len(read_results(out / "results.jsonl")) == 2


def test_val_fraction_warns_only_when_the_user_set_it(tmp_path, cache):
    data = make_image_folder(tmp_path / "images", per_class=3, splits=("train", "val", "test"))
    toml = tmp_path / "t.toml"
    toml.write_text(PIPELINE.replace("CACHE", str(cache)).replace('"digits"', f'"{data}"'))
    nolimits = "source.limits={}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert run(toml, tmp_path / "a", nolimits) == 0
    assert not [w for w in caught if "is ignored" in str(w.message)]  # before: a warning
    with pytest.warns(UserWarning, match=r"val_fraction=0\.1 is ignored: image folder"):
        assert run(toml, tmp_path / "b", nolimits, "source.val_fraction=0.1") == 0


def test_cli_warnings_are_one_plain_line():
    with _plain_warnings():
        text = warnings.formatwarning(
            "val_fraction=0.1 is ignored", UserWarning, "/x/featpipe/data/resolve.py", 32
        )
        other = warnings.formatwarning("did not converge", RuntimeWarning, "/x/y.py", 1)
    assert text == "featpipe: warning: val_fraction=0.1 is ignored\n"
    assert other == "featpipe: warning: did not converge (RuntimeWarning)\n"
    assert warnings.formatwarning("x", UserWarning, "f.py", 1) != text  # restored after


@pytest.mark.slow  # two short fine-tunes of the toy backbone
def test_lpft_reads_the_probe_features_from_the_runs_store(toml, tmp_path):
    lpft = ['finetune.modes=["lpft"]', "finetune.epochs=1", "finetune.workers=0"]
    out = tmp_path / "run"
    assert run(toml, out, *lpft) == 0
    rows = {r["kind"]: r for r in read_results(out / "results.jsonl")}
    store, ft_row = rows["probe"]["provenance"]["store"]["path"], rows["finetune"]
    assert ft_row["history"][0]["probe"]["features"] == store  # not recomputed
    # At another image size the store's features are not the fine-tune's: computed afresh.
    other = tmp_path / "other"
    assert run(toml, other, *lpft, "finetune.image_size=24") == 0
    (ft_row,) = [r for r in read_results(other / "results.jsonl") if r["kind"] == "finetune"]
    assert "features" not in ft_row["history"][0]["probe"]
