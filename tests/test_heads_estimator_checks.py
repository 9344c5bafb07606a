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
    TorchLinearSVC,
    TorchLogisticRegression,
    TorchMLPClassifier,
)

ESTIMATORS = [
    TorchLogisticRegression(device="cpu", n_threads=1),
    LogisticProbe(device="cpu", n_threads=1),
    LogisticProbe(preprocess="l2", pca=2, device="cpu", n_threads=1),
    TorchLinearSVC(device="cpu", n_threads=1),
    LinearSVMProbe(device="cpu", n_threads=1),
    LinearSVMProbe(solver="liblinear"),
    RBFSVMProbe(),
    # batch 16: the checks' 300 rows at the default 200 are two Adam steps an epoch, too few
    # before early stopping ends training (MLPClassifier(early_stopping=True) fails as well).
    TorchMLPClassifier(batch_size=16, device="cpu", n_threads=1),
    TorchMLPClassifier((8, 8), early_stopping=False, device="cpu", n_threads=1),
    MLPProbe(hidden_layer_sizes=(16,), batch_size=16, device="cpu", n_threads=1),
    MLPProbe(hidden_layer_sizes=(16,), max_iter=300, solver="sklearn", early_stopping=False),
    KNNProbe(),
    KNNProbe(metric="euclidean", preprocess="none"),
    StreamingLinearHead(),
]


@parametrize_with_checks(ESTIMATORS)
def test_sklearn_estimator_checks(estimator, check) -> None:
    check(estimator)
