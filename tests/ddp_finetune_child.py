"""Subprocess for the DDP fine-tuning tests, run under torchrun or as a plain process.

usage: ddp_finetune_child.py RUN_DIR OUT_FILE [KILL_AFTER_LOADS [SIGNAL]]

Fine-tunes the toy backbone on a synthetic source whose val and test splits do not divide
evenly among 2 ranks, inside the job's process group (so that the test predictions are
gathered too). Rank 0 saves the final weights, the history, the epoch it resumed from and
the test probabilities to OUT_FILE. With KILL_AFTER_LOADS > 0 the last rank sends itself
SIGNAL (default KILL; TERM: a preemption) at that many image loads, on torchrun's first
attempt only (a restarted worker runs on). A SIGTERM exits as the CLI does (143).
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_child import KillingSource, synthetic_source

from featpipe.distributed import current_ranks, process_group
from featpipe.finetune import FineTuner
from featpipe.interrupt import Interrupted, handle_sigterm

N_TRAIN, N_VAL, N_TEST = 48, 13, 11
PARAMS = dict(
    mode="full", epochs=3, batch_size=8, lr=0.05, dropout=0.3, patience=None, verbose=0, seed=3
)


def source():
    return synthetic_source(n_train=N_TRAIN, n_val=N_VAL, n_test=N_TEST)


def main() -> None:
    run_dir, out = sys.argv[1], sys.argv[2]
    kill_after = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    signum = signal.Signals[f"SIG{sys.argv[4]}"] if len(sys.argv) > 4 else signal.SIGKILL
    ranks = current_ranks()
    if ranks.rank != ranks.world_size - 1 or ranks.restart > 0:
        kill_after = 0
    torch.set_num_threads(1)  # same reduction order in every process
    tuner = FineTuner("toy", run_dir=run_dir, **PARAMS)
    with process_group("cpu"):
        tuner.fit(KillingSource(source(), kill_after, signum))
        proba = tuner.predict_proba("test")
    if ranks.is_main:
        state = {"model": tuner.model_.state_dict(), "test_proba": torch.from_numpy(proba)}
        state.update(history=tuner.history_, best_epoch=tuner.best_epoch_, start=tuner.start_epoch_)
        torch.save(state, out)


if __name__ == "__main__":
    try:
        with handle_sigterm():
            main()
    except Interrupted as stop:
        print(stop.message, file=sys.stderr)
        sys.exit(stop.exit_code)
