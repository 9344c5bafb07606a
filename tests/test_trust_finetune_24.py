"""LP-FT caps its gradient's norm (``max_grad_norm="auto"``): its fitted head amplifies every
backbone step, and unclipped the gradient ran away in the first epoch (the demo's LP-FT at
1,079 digits fell from 93.6 % to 18.4 % val; the toy backbone here diverges to NaN). Other
modes train and hash as before."""

from __future__ import annotations

import pytest
import torch
from test_report_advice import broken_lpft

from featpipe.cli import main
from featpipe.cli.finetune import max_grad_norm as parse
from featpipe.data import open_source
from featpipe.data.splits import train_subset
from featpipe.errors import ConfigError
from featpipe.finetune import FineTuner
from featpipe.finetune.recipe import LPFT_MAX_GRAD_NORM
from featpipe.finetune.tuner import result_params
from featpipe.report.advice import warnings_for
from featpipe.report.summary import summarize

pytestmark = pytest.mark.filterwarnings("ignore:The fine-tune chose epoch")
# The demo's recipe (pipelines/demo.toml): LP-FT trains the whole network at lr 0.001.
DEMO = dict(
    epochs=2, batch_size=32, lr=0.05, backbone_lr_scale=0.02, warmup_epochs=0.5, patience=None
)
DEMO |= dict(augment="none", image_size=64, device="cpu", seed=0, verbose=0)


@pytest.fixture(scope="module")
def digits_200():
    return train_subset(open_source("digits"), 200, 0)


def record_norms(monkeypatch) -> list[float]:
    """The global gradient norm each optimiser step saw, after any clipping."""
    norms: list[float] = []
    step = torch.optim.SGD.step

    def recorded(self, *args, **kwargs):
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", recorded)
    return norms


def test_lpft_on_the_demo_recipe_keeps_its_gradient_under_the_cap(digits_200, monkeypatch):
    norms = record_norms(monkeypatch)
    tuner = FineTuner("toy", mode="lpft", **DEMO).fit(digits_200)  # diverged to NaN before
    assert tuner.max_grad_norm_ == LPFT_MAX_GRAD_NORM == 10.0
    assert max(norms) <= LPFT_MAX_GRAD_NORM * (1 + 1e-5)
    assert all(torch.isfinite(torch.tensor([h["train_loss"] for h in tuner.history_[1:]])))


def test_lpft_without_the_cap_still_diverges_on_the_toy(digits_200, monkeypatch):
    """The mechanism the cap is for: the uncapped gradient grows step after step."""
    norms = record_norms(monkeypatch)
    with pytest.raises(Exception, match="Training loss became nan"):
        FineTuner("toy", mode="lpft", max_grad_norm=None, **DEMO).fit(digits_200)
    assert max(norms) > 10 * LPFT_MAX_GRAD_NORM


def test_other_modes_train_exactly_as_before(digits_200):
    """``auto`` leaves full fine-tuning uncapped: the same losses as no cap at all."""
    one = dict(DEMO, epochs=1)
    auto = FineTuner("toy", mode="full", **one).fit(digits_200)
    none = FineTuner("toy", mode="full", max_grad_norm=None, **one).fit(digits_200)
    assert auto.max_grad_norm_ is None
    assert [h["train_loss"] for h in auto.history_] == [h["train_loss"] for h in none.history_]


def test_hashes_change_only_where_training_changed():
    """A mode that trains uncapped hashes as it did before the setting existed; LP-FT's
    capped runs do not reuse the uncapped runs' rows or checkpoints."""
    before = {"mode": "full", "lr": 0.05}
    assert result_params({**before, "max_grad_norm": "auto"}) == result_params(before)
    assert result_params({**before, "max_grad_norm": 0}) == result_params(before)
    lpft = {"mode": "lpft", "lr": 0.05}
    assert result_params({**lpft, "max_grad_norm": None}) == result_params(lpft)
    assert result_params({**lpft, "max_grad_norm": "auto"})["max_grad_norm"] == 10.0
    assert result_params({**lpft, "max_grad_norm": 10})["max_grad_norm"] == 10.0


@pytest.mark.parametrize("bad", [-1, "none", float("nan"), True])
def test_a_bad_cap_is_refused_in_one_line(digits_200, bad):
    with pytest.raises(ConfigError, match=r"max_grad_norm must be a number >= 0 \(0 or None"):
        FineTuner("toy", mode="lpft", max_grad_norm=bad, **DEMO).fit(digits_200)


def test_the_command_line_takes_auto_none_or_a_number(capsys):
    assert [parse(t) for t in ("auto", "none", "0", "5")] == ["auto", None, 0.0, 5.0]
    with pytest.raises(SystemExit):
        main(["finetune", "--data", "digits", "--max-grad-norm", "-2"])
    err = capsys.readouterr().err
    assert "--max-grad-norm: must be auto" in err and "got '-2'" in err


def test_a_broken_lpft_row_names_an_uncapped_gradient_among_its_causes():
    row = broken_lpft()  # trained before the cap: its params hold no max_grad_norm
    (line,) = warnings_for(summarize([row]))[:1]
    assert "an uncapped gradient (max_grad_norm none" in line
    row["params"]["max_grad_norm"] = 10.0
    (line,) = warnings_for(summarize([row]))[:1]
    assert "looks broken" in line and "uncapped" not in line
