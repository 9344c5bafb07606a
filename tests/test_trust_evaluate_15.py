"""Newcombe's paired interval on every kind of 2x2 table, against published values, and the
verdicts and sentences the report builds on it for those tables."""

import numpy as np
import pytest

from featpipe.evaluate.compare import compare, mcnemar, newcombe_interval
from featpipe.evaluate.metrics import wilson_interval


def _table(both: int, only_a: int, only_b: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-image correctness of A and B from the four cells of the paired 2x2 table."""
    a = [True] * both + [True] * only_a + [False] * only_b + [False] * neither
    b = [True] * both + [False] * only_a + [True] * only_b + [False] * neither
    return np.array(a), np.array(b)


def _compare(cells: tuple[int, int, int, int]):
    a, b = _table(*cells)
    return compare("A", a, "B", b)


# Newcombe (1998), "Improved confidence intervals for the difference between binomial
# proportions based on paired data", Stat Med 17:2635, Table II, method 10 (as checked by the
# R package propint's tests, ci.two.dep.props); cells are (both, A only, B only, neither).
NEWCOMBE_1998 = [
    ((36, 12, 2, 0), (0.0569, 0.3404)),  # ad - bc < 0: phi uncorrected, negative
    ((18, 12, 2, 18), (0.0562, 0.3290)),  # ad - bc > n/2: phi continuity-corrected
    ((53, 0, 0, 1), (-0.0729, 0.0729)),  # b = c = 0: no discordant pair
    ((0, 30, 0, 0), (0.8395, 1.0)),  # empty margins: phi = 0; all discordant
]


@pytest.mark.parametrize(("cells", "published"), NEWCOMBE_1998)
def test_the_interval_matches_newcombes_table(cells, published):
    low, high = newcombe_interval(*_table(*cells))
    assert (round(low, 4), round(high, 4)) == published


@pytest.mark.parametrize("cells", [(1, 0, 0, 0), (0, 0, 0, 1), (10, 0, 0, 0), (0, 0, 0, 10)])
def test_identical_tables_with_an_empty_margin_are_symmetric_about_zero(cells):
    # Both right (or both wrong) on every image: phi = 0 (a margin is empty) and each side of
    # the interval is the one Wilson distance that is not 0 (the other accuracy sits at 0 or 1).
    n = sum(cells)
    lo_w, hi_w = wilson_interval(1.0 if cells[0] else 0.0, n)
    half = (1 - lo_w) if cells[0] else hi_w
    low, high = newcombe_interval(*_table(*cells))
    assert (low, high) == pytest.approx((-half, half), abs=1e-12)
    result = _compare(cells)
    assert result.verdict == "none" and result.mcnemar.p_value == 1.0


def test_one_test_image_gives_the_wilson_limits_of_one_image():
    # n = 1: Wilson's interval of 1 of 1 is 1 / (1 + z^2) = 0.2065 to 1, of 0 of 1 is 0 to
    # z^2 / (1 + z^2) = 0.7935. A right and B wrong: 1 - sqrt(2) x 0.7935 = -0.1221 to 1.
    assert newcombe_interval(*_table(0, 1, 0, 0)) == pytest.approx((-0.1221, 1.0), abs=1e-4)
    assert newcombe_interval(*_table(0, 0, 1, 0)) == pytest.approx((-1.0, 0.1221), abs=1e-4)
    result = _compare((0, 1, 0, 0))
    assert result.verdict == "none"
    assert result.sentence() == (
        "A is not distinguishable from B (difference +100.0 points, 95 % CI -12.2 to 100.0, "
        "McNemar p=1.0)"
    )


@pytest.mark.parametrize(
    ("cells", "sentence"),
    [
        ((36, 12, 2, 0), "A beats B by 20.0 points (95 % CI 5.7 to 34.0, McNemar p=0.013)"),
        ((0, 0, 30, 0), "A trails B by 100.0 points (95 % CI 83.9 to 100.0, McNemar p=1.2e-07)"),
        (
            (53, 0, 0, 1),
            "A is not distinguishable from B (difference +0.0 points, 95 % CI -7.3 to 7.3, "
            "McNemar p=1.0)",
        ),
        (
            (0, 2, 0, 0),
            "A is 100.0 points ahead of B, but McNemar's test does not confirm it "
            "(95 % CI 7.0 to 100.0, McNemar p=0.50)",
        ),
    ],
)
def test_sentences_on_edge_tables_say_what_the_interval_and_test_say(cells, sentence):
    # Two images, A right on both and B on neither: Newcombe's interval (phi = 0) excludes 0
    # where the exact test cannot reject; the sentence says the two disagree.
    assert _compare(cells).sentence() == sentence


@pytest.mark.parametrize("k", [12, 13, 40])
def test_equal_discordant_counts_give_mcnemar_p_one_on_either_side_of_the_exact_test(k):
    # b = c: no evidence either way. The chi-square branch (b + c >= 25) took the continuity
    # correction off a gap of 0, (|0| - 1)^2 / n: 13 against 13 read p=0.84 and 40 against
    # 40 p=0.91 beside "+0.0 points", where 12 against 12 (exact test) read 1.0.
    a, b = _table(5, k, k, 5)
    assert mcnemar(a, b).p_value == 1.0
    assert compare("A", a, "B", b).sentence().endswith("McNemar p=1.0)")


def test_unequal_discordant_counts_keep_the_corrected_statistic():
    # R's mcnemar.test statistic, (|b - c| - 1)^2 / (b + c) for b != c: 25 / 34 = 0.7353.
    result = mcnemar(*_table(0, 20, 14, 0))
    assert result.method == "chi2"
    assert result.statistic == pytest.approx(25 / 34)


def test_no_table_up_to_twelve_images_breaks_the_interval_or_the_verdict():
    # Every 2x2 table of 1 to 12 images: the interval holds the difference within [-1, 1],
    # has a width, and never excludes 0 where McNemar's p is 1 (there the difference is 0).
    for n in range(1, 13):
        for both in range(n + 1):
            for only_a in range(n + 1 - both):
                for only_b in range(n + 1 - both - only_a):
                    cells = (both, only_a, only_b, n - both - only_a - only_b)
                    result = _compare(cells)
                    assert -1 <= result.ci_low <= result.difference <= result.ci_high <= 1
                    assert result.ci_high > result.ci_low, cells
                    if result.mcnemar.p_value == 1.0:
                        assert not result.distinguishable, cells
