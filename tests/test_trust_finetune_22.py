"""A fine-tune's checkpoint records the precision it computes at (its row's compute has it):
a run_dir trained at another precision (a CPU fp32 run resumed on CUDA bf16, and back) is
refused in one line, not continued and reported as this fit's; checkpoints from before the
record resume as they did. CUDA is simulated by ``probe.own_compute`` reporting bf16."""

from __future__ import annotations

import pytest
from finetune_child import synthetic_source
from test_finetune import StopAfter, tuner

from featpipe.cli import main as cli_main
from featpipe.errors import ConfigError
from featpipe.finetune import checkpoint, probe

START_OVER = r"Use another run directory, or resume=False \(CLI: --no-resume\) to start over\."
# The toy's head mode learns little in 2 epochs: what is checked here is the resume.
pytestmark = pytest.mark.filterwarnings("ignore:The fine-tune chose epoch")


@pytest.fixture
def on_cuda(monkeypatch):
    """``on_cuda()``: fits from now on compute as a bf16 CUDA fine-tune records it."""
    real = probe.own_compute

    def patch() -> None:
        monkeypatch.setattr(
            probe, "own_compute", lambda *a, **kw: {**real(*a, **kw), "precision": "bf16"}
        )

    return patch


def interrupted_after_epoch_1(run_dir) -> None:
    with pytest.raises(KeyboardInterrupt):
        tuner(mode="head", run_dir=run_dir, callbacks=[StopAfter(1)]).fit(synthetic_source())


def test_a_cpu_checkpoint_is_not_resumed_at_cuda_precision(tmp_path, on_cuda):
    # Before: the fp32 epoch 1 was continued at bf16, and the run reported (its row's
    # compute: bf16) as one fine-tune at bf16.
    run_dir = tmp_path / "run"
    interrupted_after_epoch_1(run_dir)
    assert checkpoint.load(run_dir / checkpoint.LAST)["config"]["precision"] == "fp32"
    on_cuda()
    said = rf"\(precision: trained at fp32, this fit trains at bf16 \(.*\)\)\. {START_OVER}"
    with pytest.raises(ConfigError, match=said) as refused:
        tuner(mode="head", run_dir=run_dir).fit(synthetic_source())
    assert "\n" not in str(refused.value) and "resume on the device" in str(refused.value)
    # The way out it names: starting over records the new precision, which then resumes.
    fresh = tuner(mode="head", run_dir=run_dir, resume=False).fit(synthetic_source())
    assert fresh.start_epoch_ == 0
    assert checkpoint.load(run_dir / checkpoint.LAST)["config"]["precision"] == "bf16"
    assert tuner(mode="head", run_dir=run_dir).fit(synthetic_source()).start_epoch_ == 2


def test_a_cuda_checkpoint_is_not_resumed_on_the_cpu(tmp_path, on_cuda, monkeypatch):
    run_dir = tmp_path / "run"
    on_cuda()
    interrupted_after_epoch_1(run_dir)
    monkeypatch.undo()  # back on the CPU
    said = r"\(precision: trained at bf16, this fit trains at fp32 \("
    with pytest.raises(ConfigError, match=said):
        tuner(mode="head", run_dir=run_dir).fit(synthetic_source())


def test_a_checkpoint_without_a_recorded_precision_still_resumes(tmp_path, on_cuda):
    # Checkpoints from before the record cannot say their precision: they resume (everything
    # else still checked), and their last.pt records this fit's precision from then on.
    run_dir = tmp_path / "run"
    interrupted_after_epoch_1(run_dir)
    last = checkpoint.load(run_dir / checkpoint.LAST)
    del last["config"]["precision"]
    checkpoint.save(run_dir / checkpoint.LAST, last)
    resumed = tuner(mode="head", run_dir=run_dir).fit(synthetic_source())
    assert resumed.start_epoch_ == 1 and resumed.history_[-1]["epoch"] == 2
    assert checkpoint.load(run_dir / checkpoint.LAST)["config"]["precision"] == "fp32"
    on_cuda()  # now recorded: another precision is refused
    with pytest.raises(ConfigError, match="precision: trained at fp32"):
        tuner(mode="head", run_dir=run_dir).fit(synthetic_source())


def test_cli_refuses_a_run_dir_of_another_precision_in_one_line(
    split_image_folder, tmp_path, capsys, on_cuda
):
    args = "finetune --backbone toy --mode head --epochs 1 --batch-size 4 --no-progress"
    args += f" --data {split_image_folder} --run-dir {tmp_path / 'run'}"
    assert cli_main(args.split()) == 0
    on_cuda()
    capsys.readouterr()
    assert cli_main(args.split()) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("featpipe finetune: error: Checkpoint ") and "\n" not in err
    assert "precision: trained at fp32, this fit trains at bf16" in err
    assert "--no-resume" in err
