"""select_and_fit: choose on val (or CV), refit on train+val, and only then read test."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest

from featpipe.errors import ConfigError, UnknownNameError
from featpipe.heads import KNNProbe, LogisticProbe, select_and_fit
from featpipe.heads.splits import FeatureSplits
from featpipe.store import FeatureStore, write_arrays

SPLIT_SIZES = {"train": 90, "val": 45, "test": 45}


def blobs(n: int, d: int = 12, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian classes with overlapping means, so accuracy depends on regularisation."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(scale=1.2, size=(classes, d))
    y = np.arange(n) % classes
    return (centres[y] + rng.normal(size=(n, d))).astype(np.float32), y


def split_arrays(with_val: bool = True) -> dict:
    out = {}
    for i, (split, n) in enumerate(SPLIT_SIZES.items()):
        if split != "val" or with_val:
            out[split] = blobs(n, seed=i)
    return out


def make_store(path, with_val: bool = True) -> FeatureStore:
    parts = split_arrays(with_val)
    X = np.concatenate([parts[s][0] for s in parts])
    y = np.concatenate([parts[s][1] for s in parts])
    splits = [s for s in parts for _ in range(len(parts[s][1]))]
    return write_arrays(path, {"pooled": X}, y, splits, ["a", "b", "c"])


class RecordingStore:
    """Wraps a store and records which split each read touched, in order."""

    def __init__(self, store: FeatureStore, log: list[str]):
        self._store, self.log = store, log

    def __getattr__(self, name):
        return getattr(self._store, name)

    def arrays(self, layer, split=None, **kw):
        self.log.append(f"arrays:{split}")
        return self._store.arrays(layer, split, **kw)

    def labels(self, split=None):
        self.log.append(f"labels:{split}")
        return self._store.labels(split)


class RefitLoggingLogistic(LogisticProbe):
    """LogisticProbe that logs each fit on the shared log (to order fits against reads)."""

    log: ClassVar[list[str]] = []

    def fit(self, X, y):
        type(self).log.append(f"fit:{len(y)}")
        return super().fit(X, y)


def test_arrays_with_val_choose_refit_and_test() -> None:
    result = select_and_fit("logreg", split_arrays(), grid={"C": [1e-4, 1e-2, 1.0]})
    assert result.selection == "val" and result.head == "logreg"
    assert [p["C"] for p, _ in result.curve] == [1e-4, 1e-2, 1.0]
    assert result.params["C"] == result.curve[int(np.argmax([s for _, s in result.curve]))][0]["C"]
    assert result.val_accuracy == max(s for _, s in result.curve)
    # refit on train + val
    assert result.estimator.n_features_in_ == 12
    X_te, y_te = split_arrays()["test"]
    assert result.test_accuracy == pytest.approx(result.estimator.score(X_te, y_te))
    assert result.test_accuracy > 0.6
    assert result.test_scores.shape == (45, 3)
    assert result.fit_seconds > 0 and result.predict_seconds > 0
    summary = result.summary()
    assert summary["params"] == result.params and len(summary["curve"]) == 3


def test_logreg_path_scores_equal_plain_refits() -> None:
    """The warm-started path gives the same validation curve as independent fits."""
    data = split_arrays()
    fast = select_and_fit("logreg", data, grid={"C": [1e-3, 1e-1, 10.0]})
    slow = select_and_fit(LogisticProbe(), data, grid=[{"C": [1e-3, 1e-1, 10.0]}, {"C": [1.0]}])
    fast_scores = [s for _, s in fast.curve]
    slow_scores = [s for _, s in slow.curve][:3]
    np.testing.assert_allclose(fast_scores, slow_scores, atol=1 / 45 + 1e-9)


def test_test_split_is_read_only_after_the_final_refit(tmp_path) -> None:
    log: ClassVar[list[str]] = []
    RefitLoggingLogistic.log = log
    store = RecordingStore(make_store(tmp_path / "s.h5"), log)
    result = select_and_fit(RefitLoggingLogistic(), store, layer="pooled", grid={"C": [0.01, 1.0]})
    test_reads = [i for i, e in enumerate(log) if e.endswith(":test")]
    refit = log.index(f"fit:{SPLIT_SIZES['train'] + SPLIT_SIZES['val']}")
    assert test_reads and min(test_reads) > refit, log
    assert log[:2] == ["arrays:train", "arrays:val"]
    assert result.test_ids is not None and len(result.test_ids) == SPLIT_SIZES["test"]


def test_without_val_split_uses_stratified_cv_on_train(tmp_path) -> None:
    log: ClassVar[list[str]] = []
    store = RecordingStore(make_store(tmp_path / "s.h5", with_val=False), log)
    result = select_and_fit(KNNProbe(), store, layer="pooled", grid={"n_neighbors": [1, 15]}, cv=3)
    assert result.selection == "cv3"
    assert "arrays:val" not in log
    assert log.index("arrays:test") == len(log) - 1  # test read last
    assert result.estimator.classifier_.n_samples_fit_ == SPLIT_SIZES["train"]
    assert result.refit_on == "train"


@pytest.mark.parametrize("cv", [0, 1])
def test_fewer_than_two_folds_are_refused_as_such(tmp_path, cv: int) -> None:
    store = make_store(tmp_path / "s.h5", with_val=False)
    with pytest.raises(ConfigError, match=f"cv={cv} folds: cross-validation needs at least 2"):
        select_and_fit(KNNProbe(), store, layer="pooled", grid={"n_neighbors": [1]}, cv=cv)


@pytest.mark.parametrize("name", ["linear_svm", "rbf_svm", "mlp", "knn"])
def test_every_head_name_selects_and_fits(name: str) -> None:
    result = select_and_fit(name, split_arrays())
    assert result.test_accuracy > 0.5, (name, result.params)
    assert len(result.curve) >= 3


def test_errors_name_the_problem() -> None:
    with pytest.raises(UnknownNameError, match="Did you mean: 'logreg'"):
        select_and_fit("logreq", split_arrays())
    with pytest.raises(ConfigError, match="need a 'train' split"):
        select_and_fit("knn", {"test": blobs(10)})
    tiny = {"train": (np.eye(4, dtype=np.float32), np.array([0, 0, 0, 1]))}
    with pytest.raises(ConfigError, match="rarest training class has 1 sample"):
        select_and_fit("knn", tiny)


def two_layer_store(path) -> FeatureStore:
    """'pooled' and a 'wide' layer at a scale 1000 times larger."""
    parts = split_arrays()
    X = np.concatenate([parts[s][0] for s in parts])
    y = np.concatenate([parts[s][1] for s in parts])
    splits = [s for s in parts for _ in range(len(parts[s][1]))]
    wide = 1000 * np.random.default_rng(5).normal(size=(len(y), 5)).astype(np.float32) + 300
    return write_arrays(path, {"pooled": X, "wide": wide}, y, splits, ["a", "b", "c"])


def test_concatenated_layers_equal_manual_concatenation_of_standardised_blocks(tmp_path) -> None:
    store = two_layer_store(tmp_path / "two.h5")
    grid = {"C": [0.01, 1.0]}
    joined = select_and_fit(LogisticProbe(), store, layer="pooled+wide", grid=grid)

    def standardised(layer: str) -> dict:
        train = store.arrays(layer, "train")[0]
        mean, std = train.mean(axis=0), train.std(axis=0)
        return {s: (store.arrays(layer, s)[0] - mean) / std for s in ("train", "val", "test")}

    a, b = standardised("pooled"), standardised("wide")
    manual = {s: (np.hstack([a[s], b[s]]), store.labels(s)) for s in a}
    by_hand = select_and_fit(LogisticProbe(), manual, grid=grid)
    assert joined.estimator.n_features_in_ == 12 + 5
    assert joined.curve == by_hand.curve
    np.testing.assert_allclose(joined.test_scores, by_hand.test_scores, rtol=1e-5, atol=1e-6)
    # Each block is standardised on its own: the wide layer's scale is gone.
    X, _ = FeatureSplits(store, "pooled+wide").get("train")
    np.testing.assert_allclose(X.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(X.std(axis=0), 1, atol=1e-3)


def test_concatenated_layers_name_a_missing_part(tmp_path) -> None:
    store = two_layer_store(tmp_path / "two.h5")
    with pytest.raises(ConfigError, match=r"blocks\.9"):
        select_and_fit(LogisticProbe(), store, layer="pooled+blocks.9", grid={"C": [1.0]})


def test_predict_seconds_time_the_predictions_not_the_scores_for_metrics(monkeypatch) -> None:
    # The test split's probabilities (top-5, log loss, ECE) were timed as prediction, a second
    # pass a fine-tune's predict_seconds does not hold: probes looked slower to serve.
    from types import SimpleNamespace

    from featpipe.heads import selection

    clock = SimpleNamespace(now=0.0)
    scores = selection._scores

    def slow_scores(estimator, X):
        clock.now += 100.0  # the scores take 100 s on this clock; nothing else moves it
        return scores(estimator, X)

    monkeypatch.setattr(selection, "time", SimpleNamespace(perf_counter=lambda: clock.now))
    monkeypatch.setattr(selection, "_scores", slow_scores)
    result = select_and_fit("logreg", split_arrays(), grid={"C": [1.0]})
    assert result.test_scores is not None and result.predict_seconds == 0.0
