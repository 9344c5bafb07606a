"""Round-2 review fixes: one completeness refusal, probe's run-dir line, predict's HEAD
folder."""

from __future__ import annotations

import pytest
from conftest import make_chunked_store

from featpipe.cli import main
from featpipe.errors import IncompleteStoreError
from featpipe.store import FeatureStore
from featpipe.store.export import export_features


@pytest.fixture
def chunked(tmp_path):
    """A complete 40-row store (train 20, test 20) of one layer, 'pooled'."""
    path = tmp_path / "s.h5"
    make_chunked_store(path)
    return path


def test_a_probe_with_one_head_says_it_appended_1_row(chunked, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["probe", str(chunked), "--heads", "knn", "--run-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"appended 1 row to {run_dir / 'results.jsonl'}" in out  # it said "1 rows"


def test_predict_given_a_folder_names_a_head_saved_with_an_upper_case_suffix(
    chunked, tmp_path, capsys
):
    heads = tmp_path / "heads"
    main(["probe", str(chunked), "--heads", "knn", "--save-dir", str(heads)])
    (heads / "knn.skops").rename(heads / "KNN.SKOPS")
    capsys.readouterr()
    assert main(["predict", str(heads), str(chunked)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "it holds KNN.SKOPS" in err  # it said "it holds no saved head"


def test_check_and_export_refuse_an_incomplete_store_in_the_same_words(tmp_path, capsys):
    path = tmp_path / "part.h5"
    make_chunked_store(path, done=3)
    store = FeatureStore(path)
    with pytest.raises(IncompleteStoreError) as exported:
        export_features(store, "pooled", tmp_path / "x.npz")
    assert main(["check", str(path)]) == 2
    checked = capsys.readouterr().err.strip()
    said = "the store is incomplete (1 of 4 chunks are not written yet). Wait for its extraction"
    assert f"Cannot export {path}: {said}" in str(exported.value)
    assert f"Cannot check {path}: {said}" in checked and checked.endswith("Then check again.")
    with pytest.raises(IncompleteStoreError, match="pass allow_incomplete=True"):
        store.arrays("pooled")
