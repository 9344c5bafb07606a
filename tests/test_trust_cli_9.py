"""The command line's outputs: an existing file a re-run would not write again is kept unless
--force (probe --save-dir from another store, probe --out, predict --out), as export did."""

from __future__ import annotations

import pytest
from conftest import random_images_store

from featpipe.cli import main


def _probe(store, *extra: str) -> int:
    return main(["probe", str(store), "--heads", "knn", "--cv", "2", *extra])


@pytest.fixture
def stores(tmp_path):
    """Two ``toy`` stores of the same ten images, at float32 and float16 (two store keys)."""
    a = random_images_store(tmp_path / "a", "float32")[1].path
    b = random_images_store(tmp_path / "b", "float16")[1].path
    return a, b


def test_a_head_saved_from_another_store_is_kept_unless_force(stores, tmp_path, capsys):
    a, b = stores
    heads = tmp_path / "heads"
    assert _probe(a, "--save-dir", str(heads)) == 0
    assert _probe(a, "--save-dir", str(heads)) == 0  # the same store again: replaced
    saved = (heads / "knn.skops").read_bytes()
    capsys.readouterr()
    assert _probe(b, "--save-dir", str(heads)) == 2  # it replaced a's head without a word
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{heads / 'knn.skops'} holds a head saved from store {a}" in err
    assert "--force" in err
    assert (heads / "knn.skops").read_bytes() == saved
    assert _probe(b, "--save-dir", str(heads), "--force") == 0
    assert str(b) in (heads / "knn.skops.json").read_text()


def test_probe_out_and_predict_out_keep_an_existing_file_unless_force(stores, tmp_path, capsys):
    a, _ = stores
    out, preds = tmp_path / "results.json", tmp_path / "preds.csv"
    for path in (out, preds):
        path.write_text("kept\n")
    heads = tmp_path / "heads"
    assert _probe(a, "--out", str(out), "--save-dir", str(heads)) == 2
    assert "results.json exists; pass --force" in capsys.readouterr().err
    assert out.read_text() == "kept\n" and not heads.exists()  # refused before fitting
    assert _probe(a, "--out", str(out), "--save-dir", str(heads), "--force") == 0
    assert '"heads"' in out.read_text()
    predict = ["predict", str(heads / "knn.skops"), str(a), "--out", str(preds)]
    capsys.readouterr()
    assert main(predict) == 2
    assert "preds.csv exists; pass --force" in capsys.readouterr().err
    assert preds.read_text() == "kept\n"
    assert main([*predict, "--force"]) == 0
    assert preds.read_text().startswith("id,")
