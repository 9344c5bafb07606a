"""Classical heads on cached features: estimators, selection, few-shot, streaming, persistence."""

from featpipe.heads.estimators import (
    KNNProbe,
    LinearSVMProbe,
    LogisticProbe,
    MLPProbe,
    ProbeHead,
    RBFSVMProbe,
)
from featpipe.heads.fewshot import FewShotResult, few_shot
from featpipe.heads.persistence import check_head_matches, load_head, read_sidecar, save_head
from featpipe.heads.registry import default_grid, list_heads, make_head, register_head
from featpipe.heads.selection import SelectionResult, select_and_fit
from featpipe.heads.streaming import StreamingLinearHead
from featpipe.heads.torch_logreg import (
    LogRegPath,
    TorchLogisticRegression,
    logistic_objective,
    logreg_path,
)

__all__ = [
    "Embedder",
    "FewShotResult",
    "KNNProbe",
    "LinearSVMProbe",
    "LogRegPath",
    "LogisticProbe",
    "MLPProbe",
    "ProbeHead",
    "RBFSVMProbe",
    "SelectionResult",
    "StreamingLinearHead",
    "TorchLogisticRegression",
    "check_head_matches",
    "default_grid",
    "few_shot",
    "list_heads",
    "load_head",
    "logistic_objective",
    "logreg_path",
    "make_head",
    "read_sidecar",
    "register_head",
    "save_head",
    "select_and_fit",
]


def __getattr__(name: str):
    # The Embedder runs backbones, so it lives in featpipe.extract, above the heads; it is
    # still importable from here, without heads importing extraction when it is not used.
    if name == "Embedder":
        from featpipe.extract.embedder import Embedder

        return Embedder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
