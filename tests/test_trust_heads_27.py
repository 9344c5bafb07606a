"""select_and_fit checks its grid up front, in featpipe's errors: a single value where a list
belongs says how to wrap it, and a parameter the head lacks is named with the closest (sklearn
found it only at the first candidate's set_params, with no did-you-mean)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from featpipe.errors import ConfigError, UnknownNameError
from featpipe.finetune.search import check_grid
from featpipe.heads import select_and_fit


@pytest.fixture
def splits():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3)).astype(np.float32)
    y = np.arange(40) % 2
    X[y == 1] += 2  # separable: no warning that val cannot choose
    return {"train": (X[:30], y[:30]), "val": (X[30:], y[30:])}


@pytest.mark.parametrize("value", [0.1, "0.1"], ids=["float", "str"])
def test_a_single_value_says_how_to_wrap_it(splits, value):
    with pytest.raises(ConfigError, match=r"grid\.C must be .*grid=\{'C': \[0\.1\]\}"):
        select_and_fit("logreg", splits, grid={"C": value})


def test_an_empty_list_suggests_the_heads_own_value(splits):
    with pytest.raises(ConfigError, match=r"grid=\{'C': \[1\.0\]\}; got \[\]"):
        select_and_fit("logreg", splits, grid={"C": []})


def test_an_unknown_parameter_is_named_with_the_closest(splits):
    with pytest.raises(UnknownNameError, match=r"grid\.c: not a parameter of LogisticProbe\. "
                       r"Did you mean: 'C'\? Valid: C, device"):  # fmt: skip
        select_and_fit("logreg", splits, grid={"c": [0.1]})
    # in a list of grids, the grid that holds it
    with pytest.raises(UnknownNameError, match=r"grid\[1\]\.alpha"):
        select_and_fit("logreg", splits, grid=[{"C": [0.1]}, {"alpha": [1.0]}])


def test_a_grid_that_is_no_dict_says_what_one_is(splits):
    with pytest.raises(ConfigError, match=r"grid must be a dict .* got 'C'"):
        select_and_fit("logreg", splits, grid="C")


@pytest.mark.parametrize(
    "grid",
    [[{"C": [0.1]}, {"C": [1.0]}], {"C": np.array([0.1, 1.0])}, {"C": (0.1,)}, {}],
    ids=["list of grids", "array", "tuple", "empty"],
)
def test_what_sklearn_takes_still_works(splits, grid):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = select_and_fit("logreg", splits, grid=grid)
    assert result.params.get("C", 1.0) in (0.1, 1.0)


def test_the_fine_tune_grid_uses_the_same_checker():
    with pytest.raises(UnknownNameError, match=r"grid\.lrr: not a searchable fine-tuning "
                       r"setting\. Did you mean: 'lr'"):  # fmt: skip
        check_grid({"lrr": [0.1]})
    with pytest.raises(ConfigError, match=r"grid\.lr must be a non-empty array .* got 0\.1"):
        check_grid({"lr": 0.1})
