"""Report trust checks, session 15: the method plot's bars from 0, and the interval of a
method whose seeds tested different test sets."""

from __future__ import annotations

import numpy as np
from test_report import make_row
from test_trust_report_14 import drawn  # noqa: F401  (fixture)
from test_trust_report_15 import _mixed_seeds

from featpipe.evaluate.metrics import wilson_interval
from featpipe.report import plots
from featpipe.report.content import build_document
from featpipe.report.markdown import render_markdown
from featpipe.report.summary import summarize


def test_the_method_plots_bars_start_at_0_so_their_lengths_compare(drawn):  # noqa: F811
    # Before: the axis started 15 points left of the shortest bar (at 65 % here), so the
    # 90 % bar was drawn 1.7 times as long as the 80 % one.
    rows = [make_row("a", acc=0.8), make_row("b", acc=0.9, head="knn")]
    plots.accuracy_by_method(summarize(rows))
    ax = drawn[-1].axes[0]
    assert ax.get_xlim() == (0.0, 100.0)
    assert sorted(bar.get_x() for bar in ax.patches) == [0.0, 0.0]


def test_seeds_on_different_sets_take_the_harmonic_mean_of_their_sizes():
    # Before: the smallest set's size (40 of 40 and 400), wider than the mean needs.
    s = summarize(_mixed_seeds())[0]
    p = [r["metrics"]["top1"] for r in s.rows]
    n = [r["metrics"]["n"] for r in s.rows]
    lo, hi = s.top1_ci
    assert (lo, hi) == wilson_interval(s.top1, 2 / (1 / 40 + 1 / 400))
    smallest = wilson_interval(s.top1, 40)
    assert hi - lo < smallest[1] - smallest[0]
    # Still no narrower than the mean needs when the seeds' errors are fully correlated
    # (the sets may overlap): its sd is then the mean of the seeds' own.
    sd = np.mean([np.sqrt(pi * (1 - pi) / ni) for pi, ni in zip(p, n, strict=True)])
    assert lo <= s.top1 - 1.96 * sd and hi >= s.top1 + 1.96 * sd


def test_seeds_on_one_set_keep_that_sets_interval():
    # guard: the usual case, every seed on the same 200 test images
    rows = [make_row("m", acc=0.8, seed=0, n=200), make_row("m", acc=0.7, seed=1, n=200)]
    s = summarize(rows)[0]
    assert s.top1_ci == wilson_interval(s.top1, 200)


def test_the_mixed_sets_warning_names_how_the_interval_is_taken():
    md = render_markdown(build_document(_mixed_seeds(), n_boot=100))
    (warned,) = [line for line in md.splitlines() if "tested different test images" in line]
    assert "its interval is taken at their sizes' harmonic mean" in warned
