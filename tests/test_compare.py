"""Paired bootstrap, McNemar's test against hand calculations, and the comparison sentence."""

from __future__ import annotations

import math

import numpy as np
import pytest

from featpipe.errors import ConfigError
from featpipe.evaluate import Comparison, McNemarResult, compare, holm, mcnemar, paired_bootstrap
from featpipe.evaluate.compare import format_p
from featpipe.report.summary import clear_after_holm


def pairs(both, a_only, b_only, neither):
    """Correctness vectors with the given counts of each (A, B) outcome."""
    a = [1] * both + [1] * a_only + [0] * b_only + [0] * neither
    b = [1] * both + [0] * a_only + [1] * b_only + [0] * neither
    return np.array(a, bool), np.array(b, bool)


def test_mcnemar_exact_small_counts():
    a, b = pairs(50, 1, 6, 10)  # 7 discordant pairs: exact binomial
    r = mcnemar(a, b)
    # Two-sided: 2 * P(X <= 1), X ~ Bin(7, 1/2) = 2 * (1 + 7) / 128
    assert (r.b, r.c, r.method) == (1, 6, "exact")
    assert r.p_value == pytest.approx(2 * 8 / 128)


def test_mcnemar_chi_square_with_continuity_correction():
    a, b = pairs(100, 40, 20, 5)  # 60 discordant pairs: chi-square
    r = mcnemar(a, b)
    statistic = (abs(40 - 20) - 1) ** 2 / 60  # 6.0167
    assert r.method == "chi2"
    assert r.statistic == pytest.approx(statistic)
    # chi-square with 1 dof: p = erfc(sqrt(x / 2))
    assert r.p_value == pytest.approx(math.erfc(math.sqrt(statistic / 2)))


def test_mcnemar_no_discordant_pairs():
    a, b = pairs(10, 0, 0, 3)
    assert mcnemar(a, b).p_value == 1.0


def test_paired_bootstrap_interval():
    a, b = pairs(600, 80, 20, 300)  # A is 6 points better
    diff, lo, hi = paired_bootstrap(a, b, n_boot=1000, seed=0)
    assert diff == pytest.approx(0.06)
    assert lo < diff < hi
    assert lo > 0.03 and hi < 0.09  # sd of the paired difference is ~0.01 here


def test_paired_bootstrap_uses_pairing():
    # Identical correctness: every resample gives a difference of exactly 0.
    rng = np.random.default_rng(0)
    a = rng.random(500) < 0.7
    assert paired_bootstrap(a, a.copy(), n_boot=200) == (0.0, 0.0, 0.0)


def test_sentence_when_a_wins():
    a, b = pairs(600, 80, 20, 300)
    c = compare(
        "fine-tuning (full)", a, "logistic regression on layer pooled", b, cost_a=460.0, cost_b=10.0
    )
    text = c.sentence()
    assert text.startswith(
        "fine-tuning (full) beats logistic regression on layer pooled by 6.0 points"
    )
    assert "95 % CI" in text and "McNemar p=3.6e-09" in text
    assert text.endswith("at 46 times the cost")


def test_sentence_when_ci_includes_zero():
    a, b = pairs(600, 12, 10, 300)
    c = compare("A", a, "B", b, cost_a=1.0, cost_b=4.0)
    assert not c.distinguishable
    text = c.sentence()
    assert text.startswith("A is not distinguishable from B (difference +0.2 points")
    assert "at 0.25 times the cost" in text


def test_sentence_when_a_loses():
    a, b = pairs(600, 20, 80, 300)
    c = compare("A", a, "B", b)
    lo, hi = -100 * c.ci_high, -100 * c.ci_low
    assert 0 < lo < 6.0 < hi
    assert c.sentence().startswith(f"A trails B by 6.0 points (95 % CI {lo:.1f} to {hi:.1f}")


def test_unpaired_inputs_raise():
    with pytest.raises(ConfigError, match="same test images"):
        mcnemar(np.ones(3, bool), np.ones(4, bool))


def test_sentence_when_the_interval_and_mcnemar_disagree():
    # The interval excludes zero but McNemar's exact test does not reject (p=0.052): the
    # sentence must not say "beats" (it did: "A beats B by 0.8 points (..., p=0.07)").
    a, b = pairs(600, 16, 6, 300)
    c = compare("A", a, "B", b)
    assert c.distinguishable and not c.significant and c.verdict == "mixed"
    assert c.sentence() == (
        "A is 1.1 points ahead of B, but McNemar's test does not confirm it "
        "(95 % CI 0.1 to 2.1, McNemar p=0.052)"
    )
    c = compare("B", b, "A", a)
    assert c.sentence().startswith("B is 1.1 points behind A, but McNemar's test does not")


def test_compare_without_bootstrap():
    a, b = pairs(100, 8, 1, 20)
    c = compare("A", a, "B", b, n_boot=0)
    assert (c.ci_low, c.ci_high) == (None, None) and not c.distinguishable
    assert c.verdict == "clear"  # McNemar alone decides
    assert c.sentence() == "A beats B by 5.4 points (McNemar p=0.039)"
    assert paired_bootstrap(a, b, n_boot=0) == (pytest.approx(7 / 129), None, None)
    with pytest.raises(ConfigError, match="n_boot must be an integer >= 0"):
        compare("A", a, "B", b, n_boot=-1)


@pytest.mark.parametrize(
    ("p", "text"),
    [
        (0.0496, "0.0496"),  # not 0.05: it is below the line
        (0.0504, "0.0504"),
        (0.04996, "0.04996"),  # three digits would still round both onto the line
        (0.05004, "0.05004"),
        (0.05, "0.050"),
        (0.06, "0.060"),
        (0.123, "0.12"),
        (0.5, "0.50"),
        (1.0, "1.0"),
        (0.00031, "0.00031"),
        (3.6e-9, "3.6e-09"),
    ],
)
def test_p_values_have_two_significant_digits(p, text):
    assert format_p(p) == text


def test_holm_adjusts_step_down_in_the_given_order():
    # Sorted: 0.005*4, 0.01*3, 0.03*2, then 0.04*1 lifted to the running maximum 0.06.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == [1.0, 1.0] and holm([]) == []


def test_a_matrix_of_many_pairs_stars_only_what_survives_holm():
    def pair(p: float, ci: tuple[float, float] | None = (0.01, 0.05)) -> Comparison:
        lo, hi = ci or (None, None)
        return Comparison("a", "b", 0.03, lo, hi, McNemarResult(9, 1, 0.0, p, "exact"), None)

    # Ten pairs each at p = 0.01: every one "clear" alone, none once the family is counted.
    matrix = {(0, j): pair(0.01) for j in range(1, 11)}
    assert all(c.verdict == "clear" for c in matrix.values())
    assert clear_after_holm(matrix) == set()
    matrix[0, 11] = pair(0.001)  # 11 * 0.001 < 0.05
    matrix[0, 12] = pair(0.0001, ci=(-0.01, 0.05))  # the interval still has to agree
    matrix[0, 13] = pair(0.0001, ci=None)  # no bootstrap: McNemar alone
    assert clear_after_holm(matrix) == {(0, 11), (0, 13)}
