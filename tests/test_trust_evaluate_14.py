"""The interval of a paired top-1 difference: Newcombe's score interval, not a bootstrap."""

import numpy as np
import pytest

from featpipe.evaluate.compare import compare


def _table(both: int, only_a: int, only_b: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-image correctness of A and B from the four cells of the paired 2x2 table."""
    a = [True] * both + [True] * only_a + [False] * only_b + [False] * neither
    b = [True] * both + [False] * only_a + [True] * only_b + [False] * neither
    return np.array(a), np.array(b)


def test_a_clean_sweep_on_eight_images_has_an_interval_with_a_width():
    # A right on all 8 test images and B on none: the percentile bootstrap gave "beats B by
    # 100.0 points (95 % CI 100.0 to 100.0)", certainty from 8 images.
    a, b = _table(0, 8, 0, 0)
    result = compare("A", a, "B", b)
    assert result.difference == 1.0
    assert result.ci_high == 1.0
    assert result.ci_low == pytest.approx(0.5412, abs=1e-4)
    assert "95 % CI 54.1 to 100.0" in result.sentence()


def test_the_interval_is_newcombes_as_published():
    # Cavo et al. (2012) table, the worked example of Fagerland, Lydersen and Laake's
    # "Statistical Analysis of Contingency Tables" (ch. 8), as checked in the R package
    # contingencytables (tests/testthat/test-ch8.R, Newcombe_square_and_add_CI_paired_2x2):
    # estimate -0.0621 (95 % CI -0.1186 to -0.0046). Its cross product is above n/2, so phi
    # takes the continuity correction.
    a, b = _table(59, 6, 16, 80)
    result = compare("A", a, "B", b)
    assert round(result.difference, 4) == -0.0621
    assert (round(result.ci_low, 4), round(result.ci_high, 4)) == (-0.1186, -0.0046)


@pytest.mark.parametrize(
    "cells",
    [(36, 12, 2, 0), (1, 1, 7, 12), (0, 8, 0, 0), (5, 5, 0, 0), (10, 0, 0, 10), (3, 2, 4, 1)],
)
def test_the_interval_holds_the_difference_and_turns_over_with_the_pair(cells):
    # Negative, zero (small positive cross product) and corrected phi; empty margins.
    a, b = _table(*cells)
    ab, ba = compare("A", a, "B", b), compare("B", b, "A", a)
    assert -1 <= ab.ci_low <= ab.difference <= ab.ci_high <= 1
    assert ab.ci_high - ab.ci_low > 0
    assert (ba.ci_low, ba.ci_high) == pytest.approx((-ab.ci_high, -ab.ci_low), abs=1e-12)


def test_identical_predictions_are_not_distinguishable():
    a, _ = _table(7, 0, 0, 3)
    result = compare("A", a, "B", a.copy())
    assert result.ci_low < 0 < result.ci_high
    assert result.verdict == "none"


def test_no_interval_without_resamples():
    # n_boot = 0 keeps meaning "no intervals" for the paired difference, as for top-1.
    a, b = _table(0, 8, 0, 0)
    result = compare("A", a, "B", b, n_boot=0)
    assert result.ci_low is None and result.ci_high is None
