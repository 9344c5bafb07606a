"""Heads: few-shot's tied-vote warning for a whole float n_neighbors, and selection's ties
going to the same candidate whatever order the grid lists them in, and arrays of the wrong
shapes and few-shot's train rows of one class refused in one line."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from test_trust_heads_10 import _rows

from featpipe.errors import ConfigError
from featpipe.heads import KNNProbe, few_shot, select_and_fit


@pytest.mark.parametrize("n_neighbors", [5.0, np.float64(5)])
def test_few_shot_warns_of_tied_votes_for_a_whole_float_n_neighbors(n_neighbors):
    # kNN runs n_neighbors=5.0 as 5, whose 1-shot votes all tie as 5's do; only an int warned.
    data = {"train": _rows([10] * 3, 1), "test": _rows([10] * 3, 2)}
    with pytest.warns(UserWarning, match="every vote ties"):
        few_shot(KNNProbe(n_neighbors), data, k=1, draws=2)


@pytest.mark.parametrize("order", [1, -1], ids=["increasing", "decreasing"])
def test_a_tie_goes_to_the_same_c_whatever_order_the_grid_lists_it_in(order):
    # Val rows of one class: every C scores 100 %, and C=10 of the grid [10, 0.01] was chosen
    # where [0.01, 10] chose 0.01, so a config's list order changed the test accuracy. The
    # tie goes to the lower val log loss (C=10: 0.03 against 0.64), in either order.
    data = {"train": _rows([8, 6, 4], 1), "val": _rows([2], 2), "test": _rows([3] * 3, 3)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the val rows cannot tell the candidates apart
        result = select_and_fit("logreg", data, grid={"C": [0.01, 10.0][::order]}, device="cpu")
    assert result.params == {"C": 10.0}
    assert [p["C"] for p, _ in result.curve] == [0.01, 10.0]


def _wrong_shapes(case: str) -> dict:
    X, y = _rows([6, 6], 1)
    if case == "fewer val labels than rows":
        return {"train": (X, y), "val": (X[:6], y[:5])}
    if case == "labels as a column":
        return {"train": (X, y[:, None])}
    return {"train": (X, y), "val": (X[:6, :5], y[:6])}  # another width


@pytest.mark.parametrize(
    "case", ["fewer val labels than rows", "labels as a column", "another width"]
)
def test_arrays_of_the_wrong_shapes_are_refused_in_one_line(case):
    # logreg failed deep inside: torch's 'size of tensor a (6) must match ... b (5)', and
    # 'unhashable type: list' for y of shape (n, 1).
    with pytest.raises(ConfigError, match=r"arrays are X of shape .* a head needs X \(n, 32\)"):
        select_and_fit("logreg", _wrong_shapes(case), grid={"C": [1.0]}, device="cpu")


@pytest.mark.parametrize("head", ["knn", "rbf_svm"])
def test_few_shot_refuses_train_rows_of_one_class_as_selection_does(head):
    # kNN scored a head that predicts the one class (50 %); rbf_svm raised scikit-learn's
    # ValueError.
    data = {"train": _rows([6], 1), "test": _rows([3, 3], 2)}
    with pytest.raises(ConfigError, match="holds only class '0'; a head needs rows of at least 2"):
        few_shot(head, data, k=2, draws=2)


@pytest.mark.parametrize("cv", [2.5, float("inf")])
def test_a_fractional_or_infinite_number_of_folds_is_refused(cv):
    # 2.5 folds ran as 2 ('cv2'); inf raised OverflowError.
    with pytest.raises(
        ConfigError, match=r"cv=.* folds: cross-validation needs at least 2, a whole"
    ):
        select_and_fit("knn", {"train": _rows([6, 6], 1)}, cv=cv)
