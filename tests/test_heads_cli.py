"""`featpipe probe` and `featpipe predict` end to end on a toy-backbone store."""

from __future__ import annotations

import csv
import json
import warnings

import pytest

from featpipe.cli import main
from featpipe.extract import extract


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
