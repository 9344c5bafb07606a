"""The Recommendation's tied methods name what their figure is: it follows a validation
accuracy in the same paragraph."""

from __future__ import annotations

import re

from test_report import make_row

from featpipe.report.advice import recommendation
from featpipe.report.summary import summarize


def test_the_tied_methods_figures_say_they_are_on_test():
    """'it has the best validation accuracy (85.0 %) ... tied with it on test (...): A (85.0 %)'
    read as if that figure were A's validation accuracy too (it is its test top-1)."""
    rows = [
        make_row("toy/logreg@pooled", acc=0.80, fit_seconds=1.0),
        make_row("toy/finetune:full", "finetune", acc=0.81, mode="full", fit_seconds=60),
    ]
    rows[0]["val_accuracy"], rows[1]["val_accuracy"] = 0.70, 0.85
    text = " ".join(recommendation(summarize(rows), n_boot=200))
    assert "best validation accuracy (85.0 %)" in text
    assert re.search(r"on test \([^)]*\): toy/logreg@pooled \(\d+\.\d % on test\)\.", text)
