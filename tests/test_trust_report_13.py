"""Report trust checks, session 13 (round 2): counts in words, interval bounds, the folder
`featpipe report` reads."""

from __future__ import annotations

import numpy as np
import pytest
from test_report import make_row

from featpipe.errors import ConfigError
from featpipe.evaluate import compare
from featpipe.report import write_report
from featpipe.report.content import build_document
from featpipe.report.markdown import render_markdown


def test_a_report_of_one_method_on_one_test_image_counts_in_the_singular():
    # Before: "1 methods on 1 test images of 1 classes", "Only 1 test images: ...".
    md = render_markdown(build_document([make_row("toy/logreg@pooled", n=1)], n_boot=40))
    assert "1 method on 1 test image of 1 class" in md
    assert "Only 1 test image:" in md
    assert "1 methods" not in md and "1 test images" not in md


def test_an_interval_that_excludes_zero_never_prints_a_bound_of_zero():
    # 28 test images right only for A, 15 only for B, of 200: Newcombe's interval is 0.046 to
    # 13.0 points, McNemar p=0.067. Before: "but McNemar's test does not confirm it (95 % CI
    # 0.0 to 13.0, ...)", a bound of 0.0 beside a verdict that the interval excludes 0.
    a = np.array([1] * 28 + [0] * 15 + [0] * 157, bool)
    b = np.array([0] * 28 + [1] * 15 + [0] * 157, bool)
    c = compare("A", a, "B", b)
    assert c.ci_low > 0 and c.verdict == "mixed"
    assert "does not confirm it (95 % CI 0.046 to 13.0, McNemar p=0.067)" in c.sentence()
    # and backwards (B trails A): the bounds are negated, and read the same
    assert "(95 % CI 0.046 to 13.0, McNemar p=0.067)" in compare("B", b, "A", a).sentence()


@pytest.mark.parametrize(
    ("low", "high", "p", "said"),
    [
        (0.109, 0.19, 0.001, "(95 % CI 10.9 to 19.0, "),  # the README demo's: unchanged
        (-0.025, 0.013, 0.5, "95 % CI -2.5 to 1.3, "),
        (0.0, 0.02, 0.01, "(95 % CI 0.0 to 2.0, "),
        # a trailing gap states its interval negated: 0 read "-0.0" before
        (
            -0.02,
            0.0,
            0.01,
            "1.0 points behind B, but the 95 % interval includes zero (95 % CI 0.0 to 2.0, ",
        ),
    ],
)
def test_interval_bounds_that_print_fine_keep_their_figures(low, high, p, said):
    from featpipe.evaluate.compare import Comparison, McNemarResult

    mcnemar = McNemarResult(5, 5, 0.0, p, "exact")
    sentence = Comparison("A", "B", (low + high) / 2, low, high, mcnemar, None).sentence()
    assert said in sentence and "-0.0" not in sentence


def test_report_without_results_names_the_folders_that_hold_them(tmp_path):
    # Before: "pass the folder a `featpipe run` wrote to", though the --run-dir folders of
    # `featpipe probe` and `featpipe finetune` are reported too.
    with pytest.raises(ConfigError, match=r"`featpipe probe` or `featpipe finetune`"):
        write_report(tmp_path)
