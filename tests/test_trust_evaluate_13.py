"""Trust sweep of featpipe.evaluate (session 13): paired comparisons on odd inputs."""

from __future__ import annotations

import numpy as np
import pytest

from featpipe.errors import ConfigError
from featpipe.evaluate.compare import compare, mcnemar, paired_bootstrap, paired_score_bootstrap
from featpipe.evaluate.metrics import compute_metrics

B = np.array([1, 0, 0, 1, 0, 0, 0, 1])


@pytest.mark.parametrize(
    "correct_a, shown",
    [
        (np.array([3, 1, 2, 4, 5, 6, 7, 8]), "3"),  # class indices, not correctness
        (np.array([1.0, np.nan, np.nan, 1, np.nan, np.nan, np.nan, 1]), "nan"),  # missing
    ],
)
def test_correctness_that_is_not_true_or_false_is_refused(correct_a, shown):
    """Predicted classes passed for correctness read as right wherever they were not 0 ('A
    beats B by 100.0 points'), and NaN for a missing prediction read as right."""
    with pytest.raises(ConfigError, match=f"True/False or 1/0; got values such as {shown}"):
        compare("A", correct_a, "B", B, n_boot=50)
    with pytest.raises(ConfigError, match="y_pred == y_true"):
        mcnemar(B, correct_a)


def test_correctness_as_booleans_or_as_1_and_0_gives_the_same_comparison():
    a = np.array([True, True, False, True, True, False, True, True])
    for form in (a, a.astype(int), a.astype(float)):
        assert paired_bootstrap(form, B, n_boot=50) == paired_bootstrap(a, B, n_boot=50)
        assert mcnemar(form, B) == mcnemar(a, B)


@pytest.mark.parametrize("y_true", [[0, 1, 2, np.nan], [0.0, 1.0, 2.0, 1.5]])
def test_paired_scores_refuse_labels_that_are_not_class_indices_in_one_line(y_true):
    """Float labels (NaN for a missing one) raised numpy's TypeError from a bincount."""
    pred = np.array([0, 1, 2, 1])
    with pytest.raises(ConfigError, match=r"integer class indices 0\.\.2; got float64 values"):
        paired_score_bootstrap(np.array(y_true), pred, pred, 3, n_boot=40)


def test_a_class_name_given_twice_is_refused_not_merged_in_per_class_accuracy():
    """Classes ['a', 'a', 'b'] gave per_class_accuracy {'a': 0.5, 'b': None}: class 1's
    recall overwrote class 0's 1.0."""
    proba = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.6, 0.4, 0.0]])
    with pytest.raises(ConfigError, match="'a' is given twice"):
        compute_metrics(np.array([0, 1, 1]), proba, classes=["a", "a", "b"], n_boot=0)
