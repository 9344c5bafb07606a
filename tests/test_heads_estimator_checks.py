"""Every exported head passes scikit-learn's estimator checks."""

from __future__ import annotations

from sklearn.utils.estimator_checks import parametrize_with_checks

from featpipe.extras import has_extra
from featpipe.heads import (
    FaissKNNProbe,
    KNNProbe,
    LinearSVMProbe,
    LogisticProbe,
    MLPProbe,
    NystroemClassifier,
    NystroemSVMProbe,
    RBFSVMProbe,
    StreamingLinearHead,
    StreamingLogisticProbe,
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
    StreamingLogisticProbe(chunk_rows=64, device="cpu", n_threads=1),
    NystroemClassifier(n_components=50, device="cpu", n_threads=1),
    NystroemSVMProbe(n_components=50, device="cpu", n_threads=1),
    *(
        [FaissKNNProbe(), FaissKNNProbe(metric="euclidean", weights="distance")]
        if has_extra("faiss")
        else []
    ),
]


@parametrize_with_checks(ESTIMATORS)
def test_sklearn_estimator_checks(estimator, check) -> None:
    check(estimator)
