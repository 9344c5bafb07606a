"""A tie in validation accuracy on a head's own path is broken by the path's own log loss.

The warm-started C path (logreg, in memory and streamed) and the MLP's side-by-side alphas
already hold a fitted model at every value, so the tied values' validation log loss is read
from them: selection refits nothing but the chosen head (it refitted every tied value, 2.4 s
-> 5.1 s on a 31-way tie). ``MLPPath.best_index`` follows the same rule as selection.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import record_calls

from featpipe.heads import mlp_path
from featpipe.heads.estimators import LogisticProbe, MLPProbe
from featpipe.heads.selection import select_and_fit
from featpipe.heads.streamed_logreg import StreamingLogisticProbe
from featpipe.store.writer import write_arrays

CS = [1e-6, 1e-3, 1.0]


def _blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two classes 8 standard deviations apart along every one of 5 features: every C and
    alpha classifies the val rows perfectly, so all tie on accuracy."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    return rng.normal(size=(n, 5)) + 4.0 * (2 * y[:, None] - 1), y


def _source() -> dict:
    return {"train": _blobs(40, 0), "val": _blobs(20, 1), "test": _blobs(20, 2)}


def test_a_tie_on_the_c_path_refits_only_the_chosen_head(monkeypatch) -> None:
    fits = record_calls(monkeypatch, LogisticProbe, "fit")
    result = select_and_fit("logreg", _source(), grid={"C": CS}, seed=0)
    assert [score for _, score in result.curve] == [1.0, 1.0, 1.0]  # a 3-way tie
    assert result.params == {"C": 1.0}  # the lowest val log loss, as when refitted
    assert len(fits) == 1  # the refit on train+val; the tied Cs were read from the path


def test_the_choice_of_a_many_way_tie_is_the_one_refits_made() -> None:
    """Digits, 240 train and 60 val rows, the default 45 C values: 19 tie at 91.7 % and the
    log losses of the refitted Cs chose C=10**0.5; those of the path's solutions do too."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X, _, y, _ = train_test_split(X, y, test_size=360, stratify=y, random_state=0)
    X, _, y, _ = train_test_split(X, y, train_size=300, stratify=y, random_state=0)
    X_tr, X_va, y_tr, y_va = train_test_split(X, y, test_size=0.2, stratify=y, random_state=0)
    result = select_and_fit("logreg", {"train": (X_tr, y_tr), "val": (X_va, y_va)}, seed=0)
    assert sum(score == result.val_accuracy for _, score in result.curve) == 19
    assert result.params["C"] == pytest.approx(10**0.5)


def test_a_tie_on_the_mlp_path_refits_only_the_chosen_head(monkeypatch) -> None:
    fits = record_calls(monkeypatch, MLPProbe, "fit")
    result = select_and_fit("mlp", _source(), grid={"alpha": [1e-4, 1.0]}, seed=0)
    assert [score for _, score in result.curve] == [1.0, 1.0]
    assert len(fits) == 1


def test_mlp_path_best_index_breaks_a_tie_by_val_log_loss() -> None:
    """Alphas listed strong first: the first (alpha=10, near-uniform) used to win the tie."""
    (X, y), (X_va, y_va) = _blobs(40, 0), _blobs(20, 1)
    path = mlp_path(X, y, [10.0, 1e-4], X_val=X_va, y_val=y_va, hidden_layer_sizes=(8,))
    assert path.val_accuracy.tolist() == [1.0, 1.0]
    assert path.val_log_loss[1] < path.val_log_loss[0]
    assert path.best_index == 1


def test_a_tie_on_the_streamed_path_refits_only_the_chosen_head(tmp_path, monkeypatch) -> None:
    parts = _source()
    X = np.concatenate([x for x, _ in parts.values()])
    y = np.concatenate([y for _, y in parts.values()])
    splits = np.repeat(list(parts), [len(y) for _, y in parts.values()])
    store = write_arrays(tmp_path / "s.h5", {"pooled": X}, y, splits, ["a", "b"])
    fits = record_calls(monkeypatch, StreamingLogisticProbe, "fit_store")
    result = select_and_fit("logreg_stream", store, "pooled", grid={"C": CS}, seed=0)
    assert [score for _, score in result.curve] == [1.0, 1.0, 1.0]
    assert result.params == {"C": 1.0}
    assert len(fits) == 1  # the refit on train+val
