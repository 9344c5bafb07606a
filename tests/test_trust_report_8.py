"""Trust review of reports: every seed behind the warnings and the table without duplicated test
images, the methods that table leaves out, and validation gaps within noise."""

from __future__ import annotations

from test_report import HISTORY, make_row
from test_report_advice import broken_lpft, sweep_rows

from featpipe.evaluate.leakage import DataChecks
from featpipe.report import ids_sha256
from featpipe.report.advice import recommendation, warnings_for
from featpipe.report.content import build_document
from featpipe.report.markdown import render_markdown
from featpipe.report.summary import summarize

IDS = [str(i) for i in range(120)]  # make_row's test ids
CHECKS = DataChecks("content", [[["train", "t0"], ["test", "0"]]], [], None, {}, IDS)


def test_a_broken_second_seed_of_a_fine_tune_is_warned_about():
    # The warnings read the first seed only: a fine-tune whose seed 1 collapsed (30 % from
    # 90 % at epoch 0) got no warning because seed 0 trained well.
    good = make_row("toy/finetune:lpft", "finetune", mode="lpft", history=HISTORY, n=300)
    bad = broken_lpft()
    bad["seed"] = 1
    lines = [line for line in warnings_for(summarize([good, bad])) if "looks broken" in line]
    assert len(lines) == 1 and lines[0].startswith("toy/finetune:lpft (seed 1) looks broken")


def _data_checks(rows: list[dict]) -> str:
    md = render_markdown(build_document(rows, n_boot=50, checks=CHECKS))
    return md.split("## Data checks")[1].split("\n## ")[0]


def test_the_table_without_duplicates_shows_the_mean_over_seeds():
    # It showed the first seed's top-1 (85.0) beside a results table showing the mean over
    # seeds (70.0) for the same method.
    rows = [make_row("toy/logreg@pooled", acc=0.8), make_row("toy/logreg@pooled", acc=0.6, seed=1)]
    text = _data_checks(rows)
    assert "Test top-1 (mean over seeds) with the duplicated test images left out:" in text
    assert "| toy/logreg@pooled | 70.0 | 70.2 | 70.2 |" in text


def test_the_table_without_duplicates_names_the_methods_it_leaves_out():
    # A method that tested the images in another order was dropped from the table silently.
    tune = make_row("toy/finetune:full", "finetune", acc=0.9, mode="full")
    tune["test"]["ids_sha256"] = ids_sha256(IDS[1:] + IDS[:1])
    text = _data_checks([make_row("toy/logreg@pooled"), tune])
    assert "| toy/logreg@pooled |" in text and "| toy/finetune:full |" not in text
    assert "Not in this table: toy/finetune:full, which tested other images" in text
    # Alone, it is named rather than the table vanishing without a word.
    text = _data_checks([tune])
    assert "Not in a table without the duplicated test images: toy/finetune:full" in text


def _layers(val_stage1: float, acc_stage1: float) -> list[dict]:
    final = make_row("toy/logreg@pooled", acc=0.8, n=300)
    other = make_row("toy/logreg@stage1", acc=acc_stage1, layer="stage1", n=300)
    final["val_accuracy"], other["val_accuracy"] = 0.800, val_stage1
    return [final, other]


def test_a_layer_ahead_on_validation_by_noise_is_not_said_to_beat_the_final_one():
    # 0.1 point on validation, the same predictions on test: "an intermediate layer beat the
    # final one" claimed more than the data shows.
    text = " ".join(recommendation(summarize(_layers(0.801, 0.8)), n_boot=200))
    assert "an intermediate layer beat the final one" not in text
    assert "an intermediate layer is ahead of the final one on validation (pooled:" in text
    assert (
        "but the test images do not confirm it: toy/logreg@stage1 is not distinguishable from "
        "toy/logreg@pooled (difference +0.0 points"
    ) in text
    # A gap the test images confirm keeps the README's sentence.
    text = " ".join(recommendation(summarize(_layers(0.95, 0.97)), n_boot=200))
    assert "stage1 (toy/logreg@stage1, validation 95.0 %" in text
    assert "an intermediate layer beat the final one (pooled: best validation 80.0 %" in text


def test_a_crossover_within_noise_is_not_announced():
    # Fine-tunes 0.1 point ahead on validation with the probes' test predictions were said to
    # "start to pay off": the sweep showed no such thing.
    rows = sweep_rows((0.5, 0.7, 0.75), (0.6, 0.7, 0.75))
    for row in rows:
        if row["kind"] == "finetune" and row["train_size"] > 100:
            row["val_accuracy"] += 0.001
    text = " ".join(recommendation(summarize(rows), n_boot=100))
    assert "starts to pay off" not in text
    assert (
        "The best fine-tune is ahead of the best probe on validation from 500 training images "
        "on (sweep: 100, 500, 2000): at 500, toy/finetune:full#n500 70.1 % against"
    ) in text
    assert (
        "The test images do not confirm a crossover: at 500, toy/finetune:full#n500 is not" in text
    )
    assert "; at 2000, toy/finetune:full#n2000 is not distinguishable" in text
