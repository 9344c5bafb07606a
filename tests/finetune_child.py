"""Subprocess for the fine-tuning kill-and-resume tests.

usage: finetune_child.py RUN_DIR OUT_FILE [KILL_AFTER_LOADS]
       finetune_child.py cli SECONDS_PER_IMAGE FEATPIPE_ARGS...

Fine-tunes the toy backbone on a fixed synthetic source and saves the final weights to
OUT_FILE. With KILL_AFTER_LOADS > 0 the process SIGKILLs itself when it loads that many images,
which (by the arithmetic in the test) falls in the middle of an epoch after a checkpoint exists.
``cli`` runs the ``featpipe`` command (with the toy backbone registered), each fine-tuning
image taking at least SECONDS_PER_IMAGE to load, so that a signal lands inside an epoch.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import toy_backbone  # noqa: F401  (registers 'toy')

from featpipe.data import ArraySource, ImageSource
from featpipe.finetune import FineTuner

N_TRAIN, N_VAL, N_TEST, BATCH, EPOCHS = 48, 12, 12, 8, 3


def synthetic_source(
    seed: int = 0, *, n_train: int = N_TRAIN, n_val: int = N_VAL, n_test: int = N_TEST
) -> ArraySource:
    """Three classes told apart by which colour channel is brighter, plus noise."""
    rng = np.random.default_rng(seed)
    n = n_train + n_val + n_test
    labels = np.arange(n) % 3
    images = rng.integers(0, 90, (n, 24, 24, 3), dtype=np.uint8)
    images[np.arange(n), :, :, labels] += 100
    splits = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    return ArraySource(images, labels, splits=splits, name="synthetic")


class KillingSource(ImageSource):
    """Delegates to ``parent``; SIGKILLs (or sends ``signum`` to) its own process at the
    ``kill_after``-th load."""

    def __init__(self, parent: ImageSource, kill_after: int, signum: int = signal.SIGKILL):
        self.parent, self.kill_after, self.loads = parent, kill_after, 0
        self.signum = signum
        self.classes, self.ids = parent.classes, parent.ids
        self.labels, self.splits = parent.labels, parent.splits

    def load(self, index: int):
        self.loads += 1
        if self.kill_after and self.loads >= self.kill_after:
            os.kill(os.getpid(), self.signum)
        return self.parent.load(index)

    def _fingerprint_parts(self, content: bool):
        return self.parent._fingerprint_parts(content)


def cli(seconds_per_image: float, argv: list[str]) -> int:
    from featpipe.cli import main as featpipe
    from featpipe.finetune.data import SourceDataset

    load = SourceDataset.__getitem__

    def slow_load(self, i):
        time.sleep(seconds_per_image)
        return load(self, i)

    SourceDataset.__getitem__ = slow_load
    return featpipe(argv)


def main() -> None:
    if sys.argv[1] == "cli":
        sys.exit(cli(float(sys.argv[2]), sys.argv[3:]))
    run_dir, out = sys.argv[1], sys.argv[2]
    kill_after = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    torch.set_num_threads(1)  # same reduction order in every process
    tuner = FineTuner(
        "toy",
        mode="full",
        epochs=EPOCHS,
        batch_size=BATCH,
        lr=0.05,
        dropout=0.3,
        patience=None,
        run_dir=run_dir,
        verbose=0,
        seed=3,
    )
    tuner.fit(KillingSource(synthetic_source(), kill_after))
    torch.save(tuner.model_.state_dict(), out)


if __name__ == "__main__":
    main()
