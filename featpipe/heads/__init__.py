"""Classical heads on cached features: estimators, selection, few-shot, streaming, persistence."""

from featpipe.heads.estimators import (
    KNNProbe,
    LinearSVMProbe,
    LogisticProbe,
    MLPProbe,
    ProbeHead,
    RBFSVMProbe,
)
from featpipe.heads.faiss_knn import FaissKNeighborsClassifier, FaissKNNProbe
from featpipe.heads.fewshot import FewShotResult, few_shot
from featpipe.heads.nystroem import NystroemClassifier, NystroemSVMProbe
from featpipe.heads.persistence import check_head_matches, load_head, read_sidecar, save_head
from featpipe.heads.registry import default_grid, list_heads, make_head, register_head
from featpipe.heads.selection import SelectionResult, select_and_fit
from featpipe.heads.streamed_logreg import StreamingLogisticProbe, streamed_logreg_path
from featpipe.heads.streaming import StreamingLinearHead
from featpipe.heads.torch_logreg import (
    LinearPath,
    LogRegPath,
    TorchLogisticRegression,
    logistic_objective,
    logreg_path,
)
from featpipe.heads.torch_mlp import MLPPath, TorchMLPClassifier, mlp_path
from featpipe.heads.torch_svm import TorchLinearSVC, linear_svm_path, squared_hinge_objective

__all__ = [
    "Embedder",
    "FaissKNNProbe",
    "FaissKNeighborsClassifier",
    "FewShotResult",
    "KNNProbe",
    "LinearPath",
    "LinearSVMProbe",
    "LogRegPath",
    "LogisticProbe",
    "MLPPath",
    "MLPProbe",
    "NystroemClassifier",
    "NystroemSVMProbe",
    "ProbeHead",
    "RBFSVMProbe",
    "SelectionResult",
    "StreamingLinearHead",
    "StreamingLogisticProbe",
    "TorchLinearSVC",
    "TorchLogisticRegression",
    "TorchMLPClassifier",
    "check_head_matches",
    "default_grid",
    "few_shot",
    "linear_svm_path",
    "list_heads",
    "load_head",
    "logistic_objective",
    "logreg_path",
    "make_head",
    "mlp_path",
    "read_sidecar",
    "register_head",
    "save_head",
    "select_and_fit",
    "squared_hinge_objective",
    "streamed_logreg_path",
]


def __getattr__(name: str):
    # The Embedder runs backbones, so it lives in featpipe.extract, above the heads; it is
    # still importable from here, without heads importing extraction when it is not used.
    if name == "Embedder":
        from featpipe.extract.embedder import Embedder

        return Embedder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
