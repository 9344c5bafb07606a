"""Fine-tuning under interruptions and re-runs: a grid interrupted without --run-dir, a run
stopped by the caller's callback."""

from __future__ import annotations

from finetune_child import synthetic_source
from test_finetune import tuner

from featpipe.finetune import Callback, checkpoint


class StopAt(Callback):
    """Stops training (as a time budget would) at the end of epoch ``epoch``."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_end(self, tuner, logs):
        if logs["epoch"] >= self.epoch:
            tuner.stop_training_ = True


def test_a_run_stopped_by_a_callback_is_finished_when_run_again(tmp_path):
    # The caller's callbacks run after the checkpoint: its last.pt said "not stopped", and
    # running the same finished run again trained another epoch.
    source = synthetic_source()
    first = tuner(epochs=3, run_dir=tmp_path, callbacks=[StopAt(1)]).fit(source)
    assert [h["epoch"] for h in first.history_] == [0, 1]
    assert checkpoint.load(tmp_path / checkpoint.LAST)["stopped"] is True
    again = tuner(epochs=3, run_dir=tmp_path, callbacks=[StopAt(1)]).fit(source)
    assert again.history_ == first.history_ and again.start_epoch_ == 1
