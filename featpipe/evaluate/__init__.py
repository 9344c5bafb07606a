"""Evaluation harness: one metric function, paired comparisons and cost measurement."""

from featpipe.evaluate.compare import (
    Comparison,
    McNemarResult,
    compare,
    holm,
    mcnemar,
    newcombe_interval,
    paired_bootstrap,
    paired_score_bootstrap,
)
from featpipe.evaluate.cost import (
    Cost,
    Extraction,
    Timer,
    Usage,
    measure,
    peak_host_rss_bytes,
    reset_peak_host_rss,
)
from featpipe.evaluate.metrics import (
    aggregate_over_seeds,
    compute_metrics,
    confusion_matrix,
    expected_calibration_error,
)

__all__ = [
    "Comparison",
    "Cost",
    "Extraction",
    "McNemarResult",
    "Timer",
    "Usage",
    "aggregate_over_seeds",
    "compare",
    "compute_metrics",
    "confusion_matrix",
    "expected_calibration_error",
    "holm",
    "mcnemar",
    "measure",
    "newcombe_interval",
    "paired_bootstrap",
    "paired_score_bootstrap",
    "peak_host_rss_bytes",
    "reset_peak_host_rss",
]
