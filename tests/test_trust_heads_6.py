"""Trust sweep of the classical heads (6): what a fitted head hands the evaluation and reports."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from featpipe.cli import main
from featpipe.errors import ConfigError
from featpipe.heads import KNNProbe, select_and_fit
from featpipe.store import write_arrays

SPLITS = np.array(["train", "val", "test"])


def store_without_class_in_training(path, n: int = 60, classes: int = 3):
    """A store whose last class has rows in test alone (train and val never show it)."""
    rng = np.random.default_rng(0)
    y = np.arange(n) % classes
    splits = SPLITS[(np.arange(n) // classes) % 3]
    y[(splits != "test") & (y == classes - 1)] = 0
    X = (rng.normal(size=(n, 4)) + y[:, None]).astype(np.float32)
    return write_arrays(path, {"pooled": X}, y, splits, [f"c{i}" for i in range(classes)])


@pytest.mark.parametrize("head", ["logreg", "knn", "linear_svm", "mlp"])
def test_test_scores_have_a_column_per_store_class_even_one_the_head_never_saw(
    tmp_path, head
) -> None:
    store = store_without_class_in_training(tmp_path / "s.h5")
    grid = {
        "logreg": {"C": [1.0]},
        "linear_svm": {"C": [1.0]},
        "mlp": {"alpha": [1e-4], "hidden_layer_sizes": [(8,)]},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = select_and_fit(head, store, "pooled", grid=grid.get(head), device="cpu")
    est, (X_te, _) = result.estimator, store.arrays("pooled", "test")
    assert est.classes_.tolist() == [0, 1]
    assert result.test_scores.shape == (len(X_te), 3)  # column j is class j of the store
    if hasattr(est, "predict_proba"):
        np.testing.assert_allclose(result.test_scores[:, :2], est.predict_proba(X_te))
        assert (result.test_scores[:, 2] == 0).all()
    else:  # a binary decision function: positive means classes_[1]
        score = est.decision_function(X_te)
        np.testing.assert_allclose(result.test_scores[:, :2], np.stack([-score, score], 1))
        assert (result.test_scores[:, 2] == -np.inf).all()


@pytest.mark.parametrize("head", ["knn", "linear_svm"])
def test_probe_run_dir_rows_a_head_that_never_saw_a_test_class(tmp_path, capsys, head) -> None:
    store_without_class_in_training(tmp_path / "s.h5")
    run = tmp_path / "run"
    args = ["probe", str(tmp_path / "s.h5"), "--heads", head, "--run-dir", str(run)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([*args, "--device", "cpu"]) == 0, capsys.readouterr().err
    row = json.loads((run / "results.jsonl").read_text().splitlines()[0])
    assert row["metrics"]["per_class_accuracy"]["c2"] == 0.0  # never predicted
    assert len(row["metrics"]["confusion"]) == 3


def small_store(path, n: int = 30):
    rng = np.random.default_rng(1)
    y = np.arange(n) % 3
    X = (rng.normal(size=(n, 4)) + y[:, None]).astype(np.float32)
    return write_arrays(path, {"pooled": X}, y, SPLITS[(np.arange(n) // 3) % 3], ["a", "b", "c"])


def _no_selection(*args, **kwargs):
    raise AssertionError("a head was selected before the arguments were checked")


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--heads", ","], "names no head"),
        (["--heads", "knn,logreg, knn"], "knn more than once"),
        (["--heads", "knn", "--few-shot", "50"], "'a' has 4"),
    ],
)
def test_probe_refuses_its_arguments_before_any_head_is_fitted(
    tmp_path, capsys, monkeypatch, extra, says
) -> None:
    small_store(tmp_path / "s.h5")
    monkeypatch.setattr("featpipe.heads.select_and_fit", _no_selection)
    assert main(["probe", str(tmp_path / "s.h5"), *extra]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err


def test_predict_refuses_a_store_among_several_inputs(tmp_path, capsys) -> None:
    # Two stores (or a store and images) were read as images: 'Cannot read image s.h5:
    # cannot decode ... save it again as PNG or JPEG', or a note that the head names no
    # backbone.
    small_store(tmp_path / "s.h5")
    assert (
        main(["probe", str(tmp_path / "s.h5"), "--heads", "knn", "--save-dir", str(tmp_path)]) == 0
    )
    head, store = str(tmp_path / "knn.skops"), str(tmp_path / "s.h5")
    capsys.readouterr()
    assert main(["predict", head, store, store]) == 2
    err = capsys.readouterr().err
    assert "one feature store" in err and "Traceback" not in err


@pytest.mark.parametrize("pca", ["abc", 2.5, True, "3"])
def test_pca_takes_whole_numbers_only(pca) -> None:
    # int() cut 2.5 to 2 components, read True as 1 and '3' as 3, and raised a bare
    # ValueError on 'abc'.
    X, y = np.random.default_rng(0).normal(size=(20, 4)), np.arange(20) % 2
    with pytest.raises(ConfigError, match=rf"pca must be a positive whole number.*{pca!r}"):
        KNNProbe(pca=pca).fit(X, y)
    assert KNNProbe(pca=np.int64(3)).fit(X, y).preprocessor_["pca"].n_components == 3


def test_probe_run_dir_on_a_store_without_test_rows_fails_before_fitting(
    tmp_path, capsys, monkeypatch
) -> None:
    # Every head was selected and fitted, then the row failed naming the pipeline's
    # 'source.test_fraction', and no row was written.
    rng = np.random.default_rng(0)
    y = np.arange(30) % 3
    X = (rng.normal(size=(30, 4)) + y[:, None]).astype(np.float32)
    write_arrays(tmp_path / "s.h5", {"pooled": X}, y, SPLITS[np.arange(30) % 2], list("abc"))
    monkeypatch.setattr("featpipe.heads.select_and_fit", _no_selection)
    args = ["probe", str(tmp_path / "s.h5"), "--heads", "knn", "--run-dir", str(tmp_path / "r")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--run-dir" in err and "no test rows" in err and "it has: train, val" in err


def test_faiss_knn_refuses_chunks_of_another_width_than_dim() -> None:
    pytest.importorskip("faiss")
    from featpipe.heads import FaissKNeighborsClassifier

    # faiss's own check failed with a bare AssertionError.
    X, y = np.zeros((6, 5), np.float32), np.arange(6) % 2
    for chunks in ([(X, y)], [(X[:, :4], y), (X, y)]):
        with pytest.raises(ConfigError, match=r"dim=4.*\(6, 5\)"):
            FaissKNeighborsClassifier(3).fit_chunks(chunks, 4, np.array([0, 1]))


@pytest.mark.parametrize(("k", "draws"), [(2.5, 2), (2, 2.5), ("2", 2), (True, 2)])
def test_few_shot_takes_whole_numbers_of_rows_and_draws(k, draws) -> None:
    # k=2.5 and k='2' were TypeErrors from numpy, draws=2.5 ran 2 draws, k=True drew 1 row.
    from featpipe.heads import few_shot

    X, y = np.random.default_rng(0).normal(size=(30, 4)), np.arange(30) % 3
    with pytest.raises(ConfigError, match="whole numbers >= 1"):
        few_shot("knn", {"train": (X, y), "test": (X, y)}, k=k, draws=draws)
    assert few_shot("knn", {"train": (X, y), "test": (X, y)}, k=np.int64(2), draws=2).draws == 2


@pytest.mark.parametrize(
    "extra",
    [["--heads", "knn"], ["--heads", "mlp"], ["--heads", "knn", "--few-shot", "2"]],
)
def test_probe_refuses_a_negative_seed_in_one_line(tmp_path, capsys, extra) -> None:
    # --seed -1 was numpy's traceback from the CV folds or the few-shot draws, and the MLP
    # said 'random_state must be None, an int or a np.random.RandomState; got -1'.
    rng = np.random.default_rng(0)
    y = np.arange(30) % 3
    X = (rng.normal(size=(30, 4)) + y[:, None]).astype(np.float32)
    splits = np.where(np.arange(30) % 2, "test", "train")  # no val: CV folds seeded
    write_arrays(tmp_path / "s.h5", {"pooled": X}, y, splits, list("abc"))
    assert main(["probe", str(tmp_path / "s.h5"), *extra, "--seed", "-1"]) == 2
    err = capsys.readouterr().err
    assert "seed must be an integer >= 0; got -1" in err and "Traceback" not in err
