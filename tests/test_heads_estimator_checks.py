"""Every exported head passes scikit-learn's estimator checks."""

from __future__ import annotations

from sklearn.utils.estimator_checks import parametrize_with_checks

from featpipe.heads import (
    KNNProbe,
    LinearSVMProbe,
    LogisticProbe,
    MLPProbe,
    RBFSVMProbe,
    StreamingLinearHead,
    TorchLogisticRegression,
)

ESTIMATORS = [
    TorchLogisticRegression(device="cpu", n_threads=1),
    LogisticProbe(device="cpu", n_threads=1),
    LogisticProbe(preprocess="l2", pca=2, device="cpu", n_threads=1),
    LinearSVMProbe(),
    RBFSVMProbe(),
    MLPProbe(hidden_layer_sizes=(16,), max_iter=300),
    KNNProbe(),
    KNNProbe(metric="euclidean", preprocess="none"),
    StreamingLinearHead(),
]


@parametrize_with_checks(ESTIMATORS)
def test_sklearn_estimator_checks(estimator, check) -> None:
    check(estimator)
