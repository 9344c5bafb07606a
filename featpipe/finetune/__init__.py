"""Fine-tuning a backbone with a new head, under the same splits, preprocessing and metrics as
the frozen-feature heads."""

from featpipe.finetune.callbacks import (
    Callback,
    Checkpoint,
    EarlyStopping,
    HistoryLogger,
    ProgressPrinter,
)
from featpipe.finetune.freezing import MODES, Mode
from featpipe.finetune.tuner import FineTuner

__all__ = [
    "MODES",
    "Callback",
    "Checkpoint",
    "EarlyStopping",
    "FineTuner",
    "HistoryLogger",
    "Mode",
    "ProgressPrinter",
]
