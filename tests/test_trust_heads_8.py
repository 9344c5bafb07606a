"""Trust tests for the heads (round 8): a head fitted on joined layers is refused for what it
is when used; whole-number parameters of the streamed and faiss heads are not cut."""

from __future__ import annotations

import numpy as np
import pytest

from featpipe.errors import ConfigError, HeadMismatchError
from featpipe.heads import (
    FaissKNNProbe,
    StreamingLinearHead,
    StreamingLogisticProbe,
    check_head_matches,
    load_head,
    save_head,
    select_and_fit,
)
from featpipe.heads.persistence import check_backbone_matches
from featpipe.store import write_arrays


def _store(path, n_per_split=(30, 12, 12)):
    rng = np.random.default_rng(0)
    y = np.concatenate([np.arange(n) % 3 for n in n_per_split])
    X = (rng.normal(size=(len(y), 5)) + 3 * np.eye(3, 5)[y]).astype(np.float32)
    splits = [
        s for s, n in zip(("train", "val", "test"), n_per_split, strict=True) for _ in range(n)
    ]
    return write_arrays(path, {"pooled": X, "other": X[:, ::-1] * 100 + 50}, y, splits, list("abc"))


def test_a_head_on_joined_layers_is_refused_for_what_it_is(tmp_path) -> None:
    # The layer check said the head's layers were not in the very store it was fitted on
    # ("not in the store (it holds ['pooled', 'other'])"); the head file lacks the parts'
    # train statistics the features were standardised with, so no features can be given to it.
    store = _store(tmp_path / "s.h5")
    result = select_and_fit("logreg", store, "pooled+other", grid={"C": [1.0]})
    path = save_head(result.estimator, tmp_path / "h.skops", store=store, layer="pooled+other")
    _, sidecar = load_head(path)
    for check in (
        lambda: check_head_matches(sidecar, store, "pooled+other"),
        lambda: check_backbone_matches(sidecar, sidecar["backbone"]),
    ):
        with pytest.raises(HeadMismatchError, match="joined layers 'pooled\\+other'") as err:
            check()
        assert "not in the store" not in str(err.value)
        assert "--layer pooled)" in str(err.value)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: FaissKNNProbe(2.5), id="faiss-n_neighbors-2.5"),
        pytest.param(lambda: FaissKNNProbe(True), id="faiss-n_neighbors-True"),
        pytest.param(lambda: StreamingLinearHead(epochs=2.5), id="sgd-epochs-2.5"),
        pytest.param(lambda: StreamingLinearHead(buffer_chunks="3"), id="sgd-buffer-str"),
        pytest.param(lambda: StreamingLinearHead(chunk_rows=2.5), id="sgd-chunk_rows-2.5"),
        pytest.param(lambda: StreamingLogisticProbe(chunk_rows=7.9), id="stream-chunk_rows-7.9"),
    ],
)
def test_whole_number_parameters_are_not_cut(make) -> None:
    # int() ran them cut: knn_faiss with n_neighbors=2.5 searched 2 neighbours (knn refuses
    # 2.5), epochs=2.5 trained 2 epochs, chunk_rows=7.9 read 7 rows at a time.
    head = make()
    if isinstance(head, FaissKNNProbe):
        pytest.importorskip("faiss")
    y = np.arange(20) % 2
    X = np.random.default_rng(0).normal(size=(20, 3)) + y[:, None]
    with pytest.raises(ConfigError, match=r"must be >= 1, (a )?whole number"):
        head.fit(X, y)


def test_faiss_knn_takes_its_classes_in_any_order() -> None:
    # The labels were looked up in classes by binary search: classes [1, 0] gave every row the
    # other class (0 % accuracy on the training rows), and a repeated class an extra column.
    pytest.importorskip("faiss")
    from featpipe.heads import FaissKNeighborsClassifier

    rng = np.random.default_rng(0)
    y = np.arange(20) % 2
    X = (rng.normal(size=(20, 3)) + 4 * y[:, None]).astype(np.float32)
    for classes in ([1, 0], [0, 1, 1]):
        head = FaissKNeighborsClassifier(1, metric="euclidean")
        head.fit_chunks([(X[:12], y[:12]), (X[12:], y[12:])], 3, np.array(classes))
        assert head.classes_.tolist() == [0, 1]
        assert head.predict(X).tolist() == y.tolist()
        assert head.predict_proba(X).shape == (20, 2)


def test_one_shot_knn_whose_votes_all_tie_is_said_so() -> None:
    # With one row per class, kNN's 5 neighbours are of 5 classes: every vote ties and goes to
    # the lowest class among them, so 1-shot kNN scored 20 % where the nearest neighbour
    # scored 87 % (10 classes), and nothing said why.
    import warnings

    from featpipe.heads import KNNProbe, few_shot

    rng = np.random.default_rng(0)

    def part(n: int):
        y = np.arange(n) % 10
        return (rng.normal(size=(n, 16)) * 0.3 + 3 * np.eye(10, 16)[y]).astype(np.float32), y

    src = {"train": part(100), "test": part(50)}
    with pytest.warns(UserWarning, match="every vote ties"):
        tied = few_shot("knn", src, k=1, draws=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning where the votes need not tie
        nearest = few_shot(KNNProbe(1), src, k=1, draws=2)
        few_shot(KNNProbe(5, weights="distance"), src, k=1, draws=1)
        few_shot("knn", src, k=2, draws=1)
    assert tied.mean < nearest.mean - 0.3


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"hidden_layer_sizes": (2.5,)}, "hidden_layer_sizes must be positive whole numbers"),
        ({"max_iter": 2.5}, r"max_iter >= 1 \(a whole number\)"),
        ({"n_iter_no_change": 2.5}, "n_iter_no_change must be 'auto' or >= 1; got 2.5"),
        ({"logreg": True, "max_iter": 2.5}, r"max_iter >= 1 \(a whole number\)"),
        ({"logreg": True, "max_iter": "50"}, r"max_iter >= 1 \(a whole number\)"),
        ({"svm": True, "max_iter": True}, r"max_iter >= 1 \(a whole number\)"),
        ({"logreg": True, "tol": float("nan")}, "tol must be >= 0"),
    ],
)
def test_torch_heads_take_whole_numbers_and_a_real_tol(params: dict, match: str) -> None:
    # int() cut them: the MLP trained a hidden layer of 2 units for (2.5,), 2 epochs for
    # max_iter=2.5; L-BFGS ran 1 iteration for max_iter=True, and tol=nan passed the check.
    from featpipe.heads import TorchLinearSVC, TorchLogisticRegression, TorchMLPClassifier

    params = dict(params)
    kind = TorchMLPClassifier
    if params.pop("logreg", False):
        kind = TorchLogisticRegression
    if params.pop("svm", False):
        kind = TorchLinearSVC
    with pytest.raises(ConfigError, match=match):
        kind(**params, device="cpu").fit(np.eye(4), [0, 1, 0, 1])


def test_a_joined_layers_constant_feature_is_not_blown_up(tmp_path) -> None:
    # A feature constant over the train rows (0.1, a saturated unit) had a float32 mean an ulp
    # off and a standard deviation of 1.5e-8, not 1: test rows at 0.1 + 1e-3 read as up to
    # 3,800 in the joined features, and the RBF SVM (and the MLP) scored 33 % (chance) on
    # test where the first layer alone scored 94 %.
    from featpipe.heads.splits import FeatureSplits

    rng = np.random.default_rng(0)
    n = {"train": 300, "val": 60, "test": 120}
    y = np.concatenate([np.arange(k) % 3 for k in n.values()])
    splits = [s for s, k in n.items() for _ in range(k)]
    a = (rng.normal(size=(len(y), 6)) + 3 * np.eye(3, 6)[y]).astype(np.float32)
    b = np.full((len(y), 2), 0.1, np.float32)
    b[:, 1] = rng.normal(size=len(y))
    test = np.array(splits) == "test"
    b[test, 0] += rng.uniform(0, 1e-3, size=test.sum()).astype(np.float32)
    store = write_arrays(tmp_path / "s.h5", {"a": a, "b": b}, y, splits, list("abc"))
    X_test, _ = FeatureSplits(store, "a+b").get("test")
    assert np.abs(X_test).max() < 10
    grid = {"C": [1.0]}
    joined = select_and_fit("rbf_svm", store, "a+b", grid=grid).test_accuracy
    alone = select_and_fit("rbf_svm", store, "a", grid=grid).test_accuracy
    assert joined > alone - 0.1
