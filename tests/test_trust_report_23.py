"""An LP-FT that kept the probe it started from is reported as such, not as broken: its epoch 0
is a trained probe, so "no epoch improved on its starting point" means fine-tuning added
nothing, not that training failed. The demo's LP-FT at all three sizes was warned "looks
broken" for this."""

from __future__ import annotations

from test_report import make_row, write_report

from featpipe.report.advice import kept_probe_notes, warnings_for
from featpipe.report.summary import summarize


def _lpft(val_after: list[float], best_epoch: int = 0, seed: int = 0) -> dict:
    history = [
        {"epoch": 0, "train_loss": None, "val_loss": 0.3, "val_accuracy": 0.936,
         "probe": {"C": 1.0, "val_accuracy": 0.936}},
        *({"epoch": i + 1, "train_loss": 0.5, "val_loss": 0.3, "val_accuracy": v}
          for i, v in enumerate(val_after)),
    ]  # fmt: skip
    row = make_row("toy/finetune:lpft", "finetune", mode="lpft", history=history, n=300, seed=seed)
    row["val_accuracy"] = 0.936
    row["params"] = {"epochs": len(val_after), "lr": 0.05, "backbone_lr_scale": 0.02}
    row["params"]["best_epoch"] = best_epoch
    return row


def test_an_lpft_that_kept_its_probe_is_not_broken(tmp_path):
    row = _lpft([0.936, 0.928, 0.932])  # within one image or two of the probe on 360 val rows
    assert not [line for line in warnings_for(summarize([row]), n_val=360) if "broken" in line]
    (note,) = kept_probe_notes(summarize([row]), n_val=360)
    assert note.startswith("toy/finetune:lpft (seed 0) kept the linear probe it started from")
    assert "(93.6 %)" in note
    # Without data checks (no count of val images) any gap counts: here there is none.
    md = write_report(tmp_path, [_lpft([0.936, 0.936])])["report.md"].read_text()
    assert "Fine-tunes that kept their probe:" in md and "looks broken" not in md


def test_seeds_that_kept_the_probe_are_named_together():
    rows = [_lpft([0.93], seed=0), _lpft([0.93], seed=1)]
    (note,) = kept_probe_notes(summarize(rows), n_val=360)
    assert "(seeds 0, 1) kept the linear probe" in note and "(93.6 %, 93.6 %)" in note


def test_an_lpft_that_falls_below_its_probe_is_still_broken():
    row = _lpft([0.5, 0.4])  # epoch 0 kept, but training collapsed: the warning stays
    (line,) = [line for line in warnings_for(summarize([row]), n_val=360) if "broken" in line]
    assert "ends below its own starting point" in line
    assert not kept_probe_notes(summarize([row]), n_val=360)


def test_an_lpft_that_improved_has_no_note():
    row = _lpft([0.95, 0.96], best_epoch=2)
    assert not kept_probe_notes(summarize([row]), n_val=360)


def test_a_full_finetune_stuck_at_epoch_0_is_still_broken():
    history = [
        {"epoch": 0, "train_loss": None, "val_loss": 2.3, "val_accuracy": 0.1},
        {"epoch": 1, "train_loss": 2.3, "val_loss": 2.3, "val_accuracy": 0.1},
    ]
    row = make_row("toy/finetune:full", "finetune", mode="full", history=history, n=300)
    row["params"] = {"epochs": 1, "best_epoch": 0}
    (line,) = [line for line in warnings_for(summarize([row]), n_val=360) if "broken" in line]
    assert "no epoch improved on its starting point (best epoch 0)" in line
    assert not kept_probe_notes(summarize([row]), n_val=360)
