"""`featpipe probe` and `featpipe predict` end to end on a toy-backbone store."""

from __future__ import annotations

import csv
import json
import warnings

import numpy as np
import pytest

from featpipe.cli import main
from featpipe.extract import extract
from featpipe.report import read_results
from featpipe.store import write_arrays


@pytest.fixture
def toy_store(split_image_folder, tmp_path):
    return extract(
        str(split_image_folder),
        backbone="toy",
        cache_dir=tmp_path / "cache",
        progress=False,
        workers=0,
    )


@pytest.mark.slow
def test_probe_prints_table_writes_json_and_saves_heads(toy_store, tmp_path, capsys) -> None:
    out, heads = tmp_path / "results.json", tmp_path / "heads"
    code = main(
        [
            "probe",
            str(toy_store.path),
            "--heads",
            "logreg,knn",
            "--few-shot",
            "2",
            "--draws",
            "2",
            "--out",
            str(out),
            "--save-dir",
            str(heads),
            "--device",
            "cpu",
            "--seed",
            "3",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "head" in printed and "test acc" in printed and "logreg" in printed
    report = json.loads(out.read_text())
    assert report["layer"] == "pooled" and [h["head"] for h in report["heads"]] == ["logreg", "knn"]
    for entry in report["heads"]:
        assert 0 <= entry["test_accuracy"] <= 1 and entry["few_shot"]["draws"] == 2
    assert (heads / "logreg.skops").exists() and (heads / "logreg.skops.json").exists()
    sidecar = json.loads((heads / "logreg.skops.json").read_text())
    assert sidecar["params"]["device"] == "cpu"  # --device reaches the head, not "auto"
    assert sidecar["file_format"] == "skops"


def test_probe_run_dir_holds_the_rows_featpipe_run_writes(toy_store, tmp_path, capsys) -> None:
    run_dir = tmp_path / "run"
    argv = ["probe", str(toy_store.path), "--heads", "logreg,knn", "--device", "cpu"]
    assert main([*argv, "--run-dir", str(run_dir), "--out", str(tmp_path / "r.json")]) == 0
    assert "appended 2 rows" in capsys.readouterr().out
    assert (tmp_path / "r.json").exists()  # the probe JSON is still written
    rows = read_results(run_dir / "results.jsonl")
    assert [r["method"] for r in rows] == ["toy/logreg@pooled", "toy/knn@pooled"]
    assert rows[0]["label"] == "logistic regression on layer pooled"
    assert rows[0]["cost"]["extraction_reused"] is True
    # again with one head: the folder's report shows the latest row of each method, once
    assert main([*argv[:2], "--heads", "logreg", "--run-dir", str(run_dir)]) == 0
    assert len(read_results(run_dir / "results.jsonl")) == 3
    assert main(["report", str(run_dir)]) == 0
    md = (run_dir / "report.md").read_text()
    results = md.split("## Results", 1)[1].split("\n## ", 1)[0]  # the results table
    assert results.count("| logistic regression on layer pooled |") == 1
    assert "| kNN on layer pooled |" in md and "older featpipe" not in md


@pytest.mark.parametrize("fmt", ["skops", "joblib"])
def test_predict_on_store_and_on_images_agree(toy_store, split_image_folder, tmp_path, fmt) -> None:
    if fmt == "skops":
        pytest.importorskip("skops")
    heads = tmp_path / "heads"
    probe = ["probe", str(toy_store.path), "--heads", "logreg", "--save-dir", str(heads)]
    assert main([*probe, "--save-format", fmt]) == 0
    head = str(heads / f"logreg.{fmt}")
    on_store, on_images = tmp_path / "store.csv", tmp_path / "images.csv"
    images = [str(split_image_folder / "test"), "--device", "cpu", "--out", str(on_images)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store_args = [str(toy_store.path), "--split", "test", "--out", str(on_store)]
        assert main(["predict", head, *store_args]) == 0
        assert main(["predict", head, *images]) == 0
    trust = [w for w in caught if "trust" in str(w.message)]
    # a .skops head loads without running code, so without the warning
    assert len(trust) == (2 if fmt == "joblib" else 0)
    store_rows = {r["id"]: r for r in csv.DictReader(on_store.open())}
    image_rows = list(csv.DictReader(on_images.open()))
    assert len(store_rows) == len(image_rows) == 12
    for row in image_rows:
        sid = row["id"].split(str(split_image_folder) + "/")[1]
        match = store_rows[sid]
        assert row["predicted_class"] == match["predicted_class"] in {"cat", "dog", "fox"}
        assert float(row["probability"]) == pytest.approx(float(match["probability"]), abs=1e-3)


def test_unknown_head_name_is_a_clean_error(toy_store, capsys) -> None:
    assert main(["probe", str(toy_store.path), "--heads", "logreg,svm"]) == 2
    assert "Unknown head 'svm'" in capsys.readouterr().err


def test_probe_on_concatenated_layers(split_image_folder, tmp_path, capsys) -> None:
    store = extract(
        str(split_image_folder),
        backbone="toy",
        layers=["pooled", "stage1"],
        cache_dir=tmp_path / "cache",
        progress=False,
        workers=0,
    )
    run_dir = tmp_path / "run"
    argv = ["probe", str(store.path), "--heads", "logreg", "--device", "cpu"]
    assert main([*argv, "--layer", "pooled+stage1", "--run-dir", str(run_dir)]) == 0
    (row,) = read_results(run_dir / "results.jsonl")
    assert row["layer"] == "pooled+stage1" and row["method"] == "toy/logreg@pooled+stage1"
    assert row["label"] == "logistic regression on layers pooled+stage1"
    capsys.readouterr()
    assert main([*argv, "--layer", "pooled+stage1", "--save-dir", str(tmp_path / "h")]) == 2
    assert "cannot save a head on concatenated layers" in capsys.readouterr().err


def small_store(path, splits=("train", "val", "test")):
    """30 rows of 3 blobs in each of ``splits``: a store to probe in a fraction of a second."""
    rng = np.random.default_rng(0)
    y = np.tile(np.arange(30) % 3, len(splits))
    X = (rng.normal(size=(len(y), 4)) + 3 * y[:, None]).astype(np.float32)
    rows = [s for s in splits for _ in range(30)]
    return write_arrays(path, {"pooled": X}, y, rows, ["cat", "dog", "fox"])


def test_few_shot_on_a_store_without_test_fails_before_selection(tmp_path, monkeypatch, capsys):
    store = small_store(tmp_path / "s.h5", ("train", "val"))

    def no_selection(*args, **kwargs):
        raise AssertionError("selection ran before the missing test split was noticed")

    monkeypatch.setattr("featpipe.heads.select_and_fit", no_selection)
    argv = ["probe", str(store.path), "--heads", "knn", "--few-shot", "2", "--device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "no 'test' split" in err and "it has: train, val" in err and "Traceback" not in err


def test_predict_on_a_split_the_store_lacks_names_the_splits(tmp_path, capsys) -> None:
    full = small_store(tmp_path / "full.h5")
    probe = ["probe", str(full.path), "--heads", "knn", "--save-format", "joblib"]
    assert main([*probe, "--save-dir", str(tmp_path / "h")]) == 0
    head = tmp_path / "h" / "knn.joblib"
    notest = small_store(tmp_path / "notest.h5", ("train", "val"))
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a .joblib head warns about trust
        assert main(["predict", str(head), str(notest.path), "--split", "test"]) == 2
    err = capsys.readouterr().err
    assert "no rows in split 'test'" in err and "it has: train, val" in err


@pytest.mark.parametrize("k", ["0", "-1"])
def test_few_shot_needs_a_positive_k(tmp_path, capsys, k) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["probe", str(tmp_path / "s.h5"), "--few-shot", k])
    assert stop.value.code == 2
    assert f"--few-shot: must be a positive integer; got {k}" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:  # refused before the selection runs
        main(["probe", str(tmp_path / "s.h5"), "--few-shot", "2", "--draws", k])
    assert stop.value.code == 2
    assert f"--draws: must be a positive integer; got {k}" in capsys.readouterr().err


def test_few_shot_heads_get_the_runs_device_and_seed(tmp_path, monkeypatch) -> None:
    import featpipe.heads.fewshot as fewshot

    seen, clone = set(), fewshot.clone

    def recording_clone(est, *args, **kwargs):
        params = est.get_params()
        seen.add((params.get("device"), params.get("random_state")))
        return clone(est, *args, **kwargs)

    monkeypatch.setattr(fewshot, "clone", recording_clone)
    store = small_store(tmp_path / "s.h5")
    argv = ["probe", str(store.path), "--heads", "mlp", "--few-shot", "2", "--draws", "1"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny data: convergence warnings
        assert main([*argv, "--device", "cpu", "--seed", "3"]) == 0
    assert seen == {("cpu", 3)}  # were ("auto", 0): the head's defaults
