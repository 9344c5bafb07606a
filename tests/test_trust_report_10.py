"""The balanced-accuracy and macro-F1 differences beside a paired comparison show a small gap
with enough decimals, as the top-1 gap does since 4cc4328 (a 0.03-point gap read "+0.0")."""

from featpipe.report.content import _score_differences


def test_a_small_balanced_accuracy_gap_is_not_shown_as_zero():
    text = _score_differences(
        {"balanced_accuracy": (0.0003, 0.0001, 0.0005), "macro_f1": (0.012, -0.004, 0.028)}
    )
    assert "in balanced accuracy +0.030 points (95 % CI 0.010 to 0.050)" in text
    assert "in macro F1 +1.2 points (95 % CI -0.4 to 2.8)" in text
