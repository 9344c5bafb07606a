"""One 'whole number >= 1' rule (featpipe.validation.is_count) for ECE bins and few-shot counts."""

from __future__ import annotations

import numpy as np
import pytest

from featpipe.errors import ConfigError
from featpipe.evaluate.metrics import expected_calibration_error
from featpipe.heads import few_shot


def test_expected_calibration_error_takes_a_whole_float_number_of_bins():
    # one 'whole number >= 1' rule (featpipe.validation.is_count), as the heads take 3.0
    y, proba = np.array([0, 1, 1]), np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]])
    assert expected_calibration_error(y, proba, n_bins=10.0) == expected_calibration_error(
        y, proba, n_bins=10
    )
    for bad in (2.5, True, 0, "10"):
        with pytest.raises(ConfigError, match="whole number from 1"):
            expected_calibration_error(y, proba, n_bins=bad)


def test_few_shot_takes_whole_float_counts_as_the_heads_do():
    # fewshot refused k=2.0 where knn's n_neighbors, pca and the MLP's sizes take 2.0
    rng = np.random.default_rng(0)
    y = np.arange(20) % 2
    X = (rng.normal(size=(20, 3)) + 4 * y[:, None]).astype(np.float32)
    src = {"train": (X[:12], y[:12]), "test": (X[12:], y[12:])}
    whole = few_shot("logreg", src, k=2.0, draws=2.0)
    assert (whole.k, whole.mean) == (2, few_shot("logreg", src, k=2, draws=2).mean)
    assert isinstance(whole.k, int)
    for bad in (2.5, True, 0, "2"):
        with pytest.raises(ConfigError, match="whole numbers >= 1"):
            few_shot("logreg", src, k=bad, draws=1)
