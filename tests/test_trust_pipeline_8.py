"""`featpipe run` re-runs after the pipeline file is edited: the report never shows an old
configuration's name or plots for the new one, and one backbone under two spellings is
refused rather than run twice."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from conftest import digits_config

from featpipe.errors import ConfigError
from featpipe.pipeline import run_pipeline
from featpipe.report import read_results, write_report
from featpipe.report.runplan import read_plan


def pipeline(tmp_path, backbones: list[str], **finetune):
    return digits_config(
        tmp_path, "edits", finetune={"workers": 0, **finetune}, backbones=backbones
    )


def reported_labels(run_dir) -> list[str]:
    rows = read_results(run_dir / "results.jsonl")
    return [r["label"] for r in read_plan(run_dir).select(rows)[0]]


def test_a_reused_row_takes_the_label_of_the_current_configuration(tmp_path):
    # Before: a backbone added to a one-backbone pipeline left the reused row under its old
    # label, 'kNN on layer pooled', beside 'kNN on layer pooled [toy@1]': the report said
    # "Use kNN on layer pooled" without naming which of the two backbones it meant.
    run_pipeline(pipeline(tmp_path, ["toy"]), progress=False, log=lambda _: None)
    config = pipeline(tmp_path, ["toy", "toy@1"])
    run_pipeline(config, progress=False, log=lambda _: None)
    run_dir = tmp_path / "run"
    want = ["kNN on layer pooled [toy]", "kNN on layer pooled [toy@1]"]
    assert reported_labels(run_dir) == want
    for _ in range(2):  # as `featpipe run` wrote it, then as `featpipe report` rebuilds it
        report = (run_dir / "report.md").read_text()
        assert "| kNN on layer pooled |" not in report and "Use kNN on layer pooled [" in report
        write_report(run_dir)
    # Back to one backbone: its row loses the suffix again, nothing is recomputed.
    said: list[str] = []
    run_pipeline(pipeline(tmp_path, ["toy"]), progress=False, log=said.append)
    assert any("1 method run, 1 already finished" in line for line in said)
    assert reported_labels(run_dir) == ["kNN on layer pooled"]
    assert "| kNN on layer pooled |" in (run_dir / "report.md").read_text()


@pytest.mark.parametrize("other", [" toy", "builtin:toy"])
def test_one_backbone_spelled_twice_is_refused_before_any_compute(tmp_path, other):
    # Before: each spelling ran every method again on the same store, and the report listed
    # 'kNN on layer pooled [toy]' and 'kNN on layer pooled [builtin:toy]' as two methods
    # statistically tied with each other.
    config = pipeline(tmp_path, ["toy", other])
    with pytest.raises(
        ConfigError,
        match=r"features.backbones\[1\] = '(builtin:| )toy' names the "
        r"same backbone as features.backbones\[0\] = 'toy' \('toy'\); list each",
    ):
        run_pipeline(config, progress=False, log=lambda _: None)
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_plots_of_an_earlier_configuration_do_not_stay_beside_the_new_report(tmp_path):
    # Before: plots/accuracy_by_layer.png of a run over two layers stayed after a re-run over
    # one, beside a report that no longer shows it (as did a fine-tune's curves and confusion
    # matrix once fine-tuning left the pipeline).
    config = pipeline(tmp_path, ["toy"])
    two_layers = replace(config, features=replace(config.features, layers=("pooled", "stage1")))
    two_layers = replace(two_layers, probes=replace(config.probes, layers=("pooled", "stage1")))
    run_pipeline(two_layers, progress=False, log=lambda _: None)
    plots = tmp_path / "run" / "plots"
    assert (plots / "accuracy_by_layer.png").exists()
    run_pipeline(config, progress=False, log=lambda _: None)
    assert not (plots / "accuracy_by_layer.png").exists()
    assert (plots / "accuracy_by_method.png").exists()


def test_one_weights_file_named_by_two_paths_is_refused(tmp_path, monkeypatch):
    # Before: both ran every method on the same features (the built spec names the file by
    # its absolute path, so both made one store) and the report listed them as two methods.
    from torchvision import models

    torch.save(models.squeezenet1_1(weights=None).state_dict(), tmp_path / "w.pth")
    monkeypatch.chdir(tmp_path)
    specs = [f"torchvision:squeezenet1_1@{tmp_path / 'w.pth'}", "torchvision:squeezenet1_1@w.pth"]
    with pytest.raises(ConfigError, match=r"features.backbones\[1\] = .* names the same backbone"):
        run_pipeline(pipeline(tmp_path, specs), progress=False, log=lambda _: None)
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_a_renamed_pipeline_reports_under_its_new_name(tmp_path):
    # Before: the report's title came from its first row, a reused one of the old name
    # ("featpipe report: old"), beside the new name in config.json and plan.json.
    config = replace(pipeline(tmp_path, ["toy"]), name="old")
    run_pipeline(config, progress=False, log=lambda _: None)
    renamed = replace(config, name="new", probes=replace(config.probes, heads=("knn", "logreg")))
    run_pipeline(renamed, progress=False, log=lambda _: None)
    for _ in range(2):  # as `featpipe run` wrote it, then as `featpipe report` rebuilds it
        assert (tmp_path / "run" / "report.md").read_text().startswith("# featpipe report: new\n")
        write_report(tmp_path / "run")


def test_a_backbone_spelled_otherwise_for_fine_tuning_is_refused(tmp_path):
    # Before: its probe rows were labelled '[toy]' and its fine-tune '[builtin:toy]', as if
    # two backbones, and LP-FT ran the backbone again instead of reading its feature store.
    config = pipeline(tmp_path, ["toy"], modes=["head"])
    config = replace(config, finetune=replace(config.finetune, backbones=("builtin:toy",)))
    with pytest.raises(
        ConfigError,
        match=r"finetune.backbones\[0\] = 'builtin:toy' names the "
        r"backbone of features.backbones\[0\] = 'toy'; write it the same way",
    ):
        run_pipeline(config, progress=False, log=lambda _: None)
    assert not (tmp_path / "run").exists()
