"""Training behaviour as small callbacks: early stopping, checkpoints, history, progress."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

from featpipe.atomic import replace_with, write_text_atomic
from featpipe.finetune import checkpoint


class Trainer(Protocol):
    """What callbacks read and set on the training loop (``FineTuner`` is one)."""

    epochs: int
    run_dir: str | Path | None
    history_: list[dict]
    start_epoch_: int
    best_epoch_: int
    best_score_: tuple[float, ...]
    stop_training_: bool
    saved_epoch_: int | None

    def best_state(self) -> dict[str, Any]: ...

    def training_state(self) -> dict[str, Any]: ...


class Callback:
    """Hooks the tuner calls; ``logs`` is the epoch's history row (epoch 0 = before training)."""

    def on_fit_start(self, tuner: Trainer) -> None:
        pass

    def on_epoch_end(self, tuner: Trainer, logs: dict) -> None:
        pass

    def on_fit_end(self, tuner: Trainer) -> None:
        pass


class EarlyStopping(Callback):
    """Stop once ``patience`` epochs have passed without a better validation score."""

    def __init__(self, patience: int):
        self.patience = patience

    def on_epoch_end(self, tuner: Trainer, logs: dict) -> None:
        if logs["epoch"] - tuner.best_epoch_ >= self.patience:
            tuner.stop_training_ = True


class Checkpoint(Callback):
    """``best.pt`` (weights of the best validation epoch) and ``last.pt`` (everything needed to
    resume) in ``run_dir``, written after every epoch as a pair that a crash cannot split."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)

    def on_epoch_end(self, tuner: Trainer, logs: dict) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        best = tuner.best_state() if tuner.best_epoch_ == logs["epoch"] else None
        checkpoint.save_epoch(self.run_dir, tuner.training_state(), best)
        tuner.saved_epoch_ = logs["epoch"]


class HistoryLogger(Callback):
    """``history.jsonl``: one JSON object per epoch, rewritten whole so that after a resume it
    holds exactly the epochs of the restored run; written again when a run resumes, for a
    crash (a full disk) may have left it an epoch behind ``last.pt``, and a finished run
    resumes without another epoch to write it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_fit_start(self, tuner: Trainer) -> None:
        try:
            written = self.path.read_text()
        except OSError:
            written = None
        if tuner.history_ and written != _lines(tuner.history_):
            self.on_epoch_end(tuner, tuner.history_[-1])

    def on_epoch_end(self, tuner: Trainer, logs: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = _lines(tuner.history_)
        replace_with(self.path, lambda tmp: tmp.write_text(text))


def _lines(history: list[dict]) -> str:
    return "".join(json.dumps(row) + "\n" for row in history)


class WriteJson(Callback):
    """``path`` holding ``data`` as JSON, written when fit starts: once a resumed run's
    settings are accepted, or a fresh one begins."""

    def __init__(self, path: str | Path, data: dict):
        self.path, self.data = Path(path), data

    def on_fit_start(self, tuner: Trainer) -> None:
        # Whole or not at all: a failed write (a full disk) keeps the file the run had.
        write_text_atomic(self.path, json.dumps(self.data, indent=2) + "\n")


class ProgressPrinter(Callback):
    """One line per epoch on stdout."""

    def on_fit_start(self, tuner: Trainer) -> None:
        if tuner.start_epoch_:
            print(f"resumed from epoch {tuner.start_epoch_} ({tuner.run_dir})", flush=True)

    def on_epoch_end(self, tuner: Trainer, logs: dict) -> None:
        parts = [f"epoch {logs['epoch']:>3}/{tuner.epochs}"]
        if logs.get("train_loss") is not None:
            parts.append(f"train loss {logs['train_loss']:.4f}")
        parts.append(f"val loss {logs['val_loss']:.4f} acc {100 * logs['val_accuracy']:.2f}%")
        if logs.get("images_per_s"):
            parts.append(
                f"lr {logs['lr']:.2e}  {logs['seconds']:.1f}s ({logs['images_per_s']:.0f} img/s)"
            )
        if tuner.best_epoch_ == logs["epoch"]:
            parts.append("*")
        print("  ".join(parts), flush=True)

    def on_fit_end(self, tuner: Trainer) -> None:
        print(
            f"best epoch {tuner.best_epoch_}: val accuracy {100 * tuner.best_score_[0]:.2f}%",
            flush=True,
        )
