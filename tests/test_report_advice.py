"""The report's advice: a Recommendation chosen on validation only, warnings on broken results,
data checks (also `featpipe check`), compact parameters, the sweep plot and CJK labels."""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import replace

import numpy as np
import pytest
from test_report import HISTORY, make_row

from featpipe.cli import main
from featpipe.data import ArraySource
from featpipe.evaluate.leakage import check_data, check_store, content_hashes
from featpipe.extract import extract
from featpipe.report import PlannedRun, RunPlan, plots, write_report
from featpipe.report.advice import crossover, recommendation, warnings_for
from featpipe.report.summary import summarize


def test_recommendation_never_chooses_on_test(tmp_path):
    # logreg is best on test (0.95) but worse on validation: the recommendation must name knn.
    rows = [
        make_row("toy/logreg@pooled", acc=0.95),
        make_row("toy/knn@pooled", acc=0.6, head="knn"),
        make_row("toy/mlp@blocks", acc=0.5, head="mlp", layer="blocks"),
    ]
    for row, val in zip(rows, (0.70, 0.90, 0.60), strict=True):
        row["val_accuracy"] = val
    text = " ".join(recommendation(summarize(rows), n_boot=200))
    assert text.startswith("Use toy/knn@pooled: it has the best validation accuracy (90.0 %)")
    assert "toy/logreg@pooled scored higher on test, but validation did not pick it" in text
    assert "The best layer on validation is pooled (toy/knn@pooled" in text
    md = write_report(tmp_path, rows)["report.md"].read_text()
    assert md.index("## Recommendation") < md.index("## Results")
    assert "Use toy/knn@pooled" in md


def test_recommendation_names_ties_the_cheapest_and_whether_finetuning_paid():
    rows = [
        make_row("toy/logreg@pooled", acc=0.80, fit_seconds=1.0),
        make_row("toy/logreg@blocks", acc=0.80, layer="blocks", fit_seconds=0.1),
        make_row("toy/finetune:full", "finetune", acc=0.81, mode="full", fit_seconds=60),
    ]
    rows[0]["val_accuracy"], rows[1]["val_accuracy"], rows[2]["val_accuracy"] = 0.8, 0.79, 0.85
    text = " ".join(recommendation(summarize(rows), n_boot=200))
    assert text.startswith("Use toy/finetune:full")
    assert "Statistically tied with it on test" in text
    assert "toy/logreg@pooled (" in text and "toy/logreg@blocks (" in text
    assert "The cheapest of these is toy/logreg@blocks, at 1/19 of the cost" in text
    assert "Fine-tuning did not pay for its cost: of the methods chosen on validation" in text
    assert "no intermediate layer beat the final one" in text


def sweep_rows(val_tune, val_probe):
    rows = []
    for size, vt, vp in zip((100, 500, 2000), val_tune, val_probe, strict=True):
        tune = make_row(f"toy/finetune:full#n{size}", "finetune", acc=vt, mode="full")
        probe = make_row(f"toy/logreg@pooled#n{size}", acc=vp)
        for row in (tune, probe):
            row["train_size"] = size
        rows += [tune, probe]
    return rows


def test_sweep_plot_and_crossover(tmp_path):
    rows = sweep_rows((0.5, 0.8, 0.9), (0.6, 0.7, 0.75))
    from_size, steps = crossover(summarize(rows))
    assert from_size == 500 and [s for s, _, _ in steps] == [100, 500, 2000]
    written = write_report(tmp_path, rows)
    md = written["report.md"].read_text()
    assert "Fine-tuning starts to pay off from 500 training images (sweep: 100, 500, 2000)" in md
    assert "at 2000 training images" in md  # the main recommendation: the largest size
    paired = md.split("## Paired comparisons")[1].split("\n## ")[0]
    assert "#n2000" in paired and "#n100 " not in paired and "#n500" not in paired
    png = written["accuracy_by_train_size"].read_bytes()
    assert png[:4] == b"\x89PNG"
    # the probe ahead everywhere: no crossover
    text = " ".join(recommendation(summarize(sweep_rows((0.5, 0.6, 0.7), (0.6, 0.7, 0.8))), 0))
    assert "No crossover was seen in the sweep (100, 500, 2000 training images)" in text


def broken_lpft():
    history = [
        {"epoch": 0, "train_loss": None, "val_loss": 0.5, "val_accuracy": 0.9,
         "probe": {"C": 1.0, "val_accuracy": 0.9}},
        {"epoch": 1, "train_loss": 2.0, "val_loss": 1.9, "val_accuracy": 0.4},
        {"epoch": 2, "train_loss": 2.1, "val_loss": 2.0, "val_accuracy": 0.3},
    ]  # fmt: skip
    row = make_row("toy/finetune:lpft", "finetune", acc=0.4, mode="lpft", history=history)
    row["val_accuracy"] = 0.4  # as if the last epoch had been kept
    row["params"] = {"epochs": 2, "lr": 0.5, "backbone_lr_scale": 1.0, "augment": "flip"}
    row["classes"] = [str(i) for i in range(len(row["classes"]))]
    row["metrics"]["per_class_accuracy"] = {str(i): 0.5 for i in range(len(row["classes"]))}
    return row


def test_warning_fires_on_a_broken_finetune(tmp_path):
    fine = make_row("toy/finetune:full", "finetune", mode="full", history=HISTORY, n=300)
    assert not warnings_for(summarize([fine]))  # improved, and enough test images
    (line,) = warnings_for(summarize([broken_lpft()]))[:1]
    assert "toy/finetune:lpft (seed 0) looks broken" in line
    assert "ends below its own starting point" in line and "below the probe it started" in line
    assert "too few epochs (2)" in line
    assert "a learning rate too high for LP-FT (lr 0.5" in line
    assert 'augment left on for digits (augment = "flip"' in line
    md = write_report(tmp_path, [broken_lpft()])["report.md"].read_text()
    assert "Warnings (results that look broken):" in md and "looks broken" in md


def test_warning_on_a_head_at_its_iteration_limit():
    row = make_row("toy/mlp@pooled", head="mlp", n=300)
    row["params"]["hit_iteration_limit"] = True
    (line,) = warnings_for(summarize([row]))
    assert line.startswith("toy/mlp@pooled stopped at its iteration limit (max_iter)")


def test_warning_on_too_few_test_images():
    (line,) = warnings_for(summarize([make_row("toy/logreg@pooled", n=30)]))
    assert line.startswith("Only 30 test images: the 95 % intervals on top-1 are ")
    row = make_row("toy/logreg@pooled", n=30)
    (line,) = warnings_for(summarize([row], n_boot=0))  # no intervals to quote a width of
    assert (
        line.startswith("Only 30 test images: too few to separate methods")
        and "0 points" not in line
    )


def test_an_interval_that_misses_its_point_still_plots():
    # A percentile interval from a handful of resamples can lie beside the point estimate.
    row = make_row("toy/logreg@pooled", acc=0.78)
    row["metrics"]["ci"]["top1"] = [0.825, 0.825]
    assert plots.accuracy_by_method(summarize([row])).startswith(b"\x89PNG")


def test_compact_parameters_fold_long_lists(tmp_path):
    row = make_row("toy/mlp@pooled", head="mlp")
    row["params"] = {
        "alpha": 0.01, "hidden_layer_sizes": [512, 256, 128, 64], "max_iter": 60,
        "batch_size": 200, "selection": "val", "probabilistic": True,
    }  # fmt: skip
    row["curve"] = [
        {"params": {"alpha": a, "hidden_layer_sizes": [512, 256, 128, 64]}, "score": 0.5}
        for a in (0.0001, 0.01)
    ]
    written = write_report(tmp_path, [row, make_row("toy/logreg@pooled")])
    md, html = written["report.md"].read_text(), written["report.html"].read_text()
    assert "| alpha=0.01, hidden_layer_sizes=[512, 256, 128, …], max_iter=60, … |" in md
    assert "selection" not in md.split("## Results")[1].split("## ")[0]
    assert "<td><details><summary>alpha=" in html
    assert "| C=1 |" in md  # a short list stays as it is


def source_with_duplicates() -> ArraySource:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (40, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(40) % 2
    splits = ["train"] * 24 + ["val"] * 8 + ["test"] * 8
    images[32] = images[0]  # test 32 is train 0: an exact duplicate
    images[33] = np.clip(images[1].astype(int) + 1, 0, 255)  # a near-duplicate of train 1
    return ArraySource(images, labels, splits=splits, name="dups")


@pytest.fixture
def dup_store(tmp_path):
    source = source_with_duplicates()
    store = extract(source, "toy", ["pooled"], cache_dir=tmp_path, progress=False, device="cpu")
    return source, store


def test_data_checks_find_duplicates_near_duplicates_and_small_classes(dup_store, tmp_path):
    source, store = dup_store
    checks = check_store(store, content_hashes(source))
    assert checks.basis.startswith("by content hash")
    assert checks.duplicates == [[["train", "dups/000000"], ["test", "dups/000032"]]]
    # (the toy backbone's few features make other pairs close too)
    assert {"dups/000032", "dups/000033"} <= checks.near_test
    assert checks.small_classes == {"val": {"0": 4, "1": 4}, "test": {"0": 4, "1": 4}}
    text = " ".join(checks.lines())
    assert "1 image appears in more than one split" in text
    assert "of the 8 test images have a near-duplicate in train" in text
    # By stored features when the source is not at hand: the same exact duplicate.
    assert check_store(store).duplicates == checks.duplicates


def test_near_duplicates_by_cosine():
    features = np.array([[1, 0, 0], [0, 1, 0], [1, 0.01, 0], [0, 1, 1], [0.5, 0.5, 0]], float)
    splits = ["train", "train", "test", "test", "val"]
    ids = ["a", "b", "c", "d", "e"]
    checks = check_data(ids, np.array([0, 1, 0, 1, 0]), splits, ["x", "y"], features=features)
    assert checks.near == [["c", "a", pytest.approx(0.99995, abs=1e-5)]]  # d: cosine 0.71
    assert checks.basis.startswith("by identical stored features") and not checks.duplicates


def test_report_lists_checks_and_top1_without_duplicates(dup_store, tmp_path):
    source, store = dup_store
    row = make_row("toy/logreg@pooled", n=8)
    row["classes"] = ["0", "1"]
    ids = store.ids("test")
    y = store.labels("test")
    pred = y.copy()
    pred[2:] = 1 - y[2:]  # right only on the two duplicated images
    row["test"] = {"ids_sha256": __import__("featpipe.report", fromlist=["x"]).ids_sha256(ids),
                   "y_true": y.tolist(), "y_pred": pred.tolist()}  # fmt: skip
    row["metrics"]["confusion"] = [[0, 0], [0, 0]]
    row["metrics"]["per_class_accuracy"] = {"0": 0.25, "1": 0.25}
    row["provenance"]["store"] = {"path": str(store.path), "key": store.key}
    md = write_report(tmp_path / "run", [row], source=source)["report.md"].read_text()
    assert "## Data checks" in md
    assert "| toy/logreg@pooled | 25.0 | 14.3 | 0.0 |" in md
    # rebuilt without the source: the saved checks (content hashes) are reused
    again = write_report(tmp_path / "run", [row])["report.md"].read_text()
    assert again == md
    # ... but only for the data they checked: a run re-planned on other data (stopped
    # before its report) compares stored features instead.
    plan = RunPlan("unit", [PlannedRun(row["method"], 0, row["config_hash"])], 0, "first")
    write_report(tmp_path / "run2", [row], plan, source=source)
    same = write_report(tmp_path / "run2", [row], plan)["report.md"].read_text()
    assert "by content hash" in same
    other = replace(plan, source_fingerprint="second")
    rebuilt = write_report(tmp_path / "run2", [row], other)["report.md"].read_text()
    assert "by content hash" not in rebuilt and "by identical stored features" in rebuilt


def test_a_damaged_or_older_checks_file_is_redone_from_the_store(dup_store, tmp_path):
    # A checks.json cut short by a kill (it was not written atomically) stopped every later
    # report with a bare JSONDecodeError; one saved before near-duplicates were looked for in
    # val was shown as if they had been.
    source, store = dup_store
    row = make_row("toy/logreg@pooled", n=8)
    row["provenance"]["store"] = {"path": str(store.path), "key": store.key}
    run = tmp_path / "run"
    write_report(run, [row], source=source)
    saved = json.loads((run / "checks.json").read_text())
    assert saved["near_reference"] == ["train", "val"]
    (run / "checks.json").write_text('{"basis": "by con')
    md = write_report(run, [row])["report.md"].read_text()
    assert "by identical stored features" in md  # redone from the store
    json.loads((run / "checks.json").read_text())  # and saved whole
    del saved["near_reference"]  # as an older featpipe saved them
    (run / "checks.json").write_text(json.dumps(saved))
    assert "by identical stored features" in write_report(run, [row])["report.md"].read_text()
    # Without a store to redo them, older checks are shown for what they were.
    (run / "checks.json").write_text(json.dumps(saved))
    row["provenance"]["store"] = {"path": str(tmp_path / "gone.h5"), "key": "k"}
    md = write_report(run, [row])["report.md"].read_text()
    assert "by content hash" in md and "a near-duplicate in train (cosine" in md


def test_featpipe_check_command(dup_store, capsys):
    _, store = dup_store
    assert main(["check", str(store.path)]) == 1
    out = capsys.readouterr().out
    assert "identical stored features" in out and "near-duplicate in train" in out
    assert main(["check", str(store.path) + ".missing"]) == 2


CHINESE = ["蚂蚁", "蜜蜂"]


def test_chinese_class_names_draw_with_a_cjk_font():
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    if plots.cjk_font() is None:
        pytest.skip("no CJK font installed (Debian: fonts-noto-cjk)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        png = plots.confusion([[3, 1], [0, 4]], CHINESE, "蚂蚁 / 蜜蜂")
    assert png[:4] == b"\x89PNG"
    assert not [w for w in caught if "Glyph" in str(w.message) or "font" in str(w.message)]
    # The fonts the labels resolve to, in fallback order: one of them has the glyphs.
    prop = font_manager.FontProperties(family=plots.font_family())
    paths = font_manager.fontManager._find_fonts_by_props(prop)
    assert any(all(FT2Font(p).get_char_index(ord(ch)) for ch in "蚂蚁蜜蜂") for p in paths)


def test_without_a_cjk_font_one_line_names_the_package(monkeypatch):
    monkeypatch.setattr(plots, "cjk_font", lambda: None)
    monkeypatch.setattr(plots, "_warned_missing", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plots.confusion([[3, 1], [0, 4]], CHINESE, "t")
        plots.accuracy_by_method(summarize([copy.deepcopy(make_row("蚂蚁@pooled"))]))
    (line,) = [str(w.message) for w in caught]
    assert "fonts-noto-cjk" in line


def test_cost_axis_labels_thin_out_as_the_range_widens():
    def labels(lo: float, hi: float, ticks: list[float]) -> list[str]:
        formatter = plots.log_tick_labels(lo, hi)
        return [formatter(t, None) for t in ticks]

    # a narrow range: every tick
    assert labels(5.5, 14, [6, 7, 8, 9, 10]) == ["6", "7", "8", "9", "10"]
    # about a decade: 8, 9 and 10 would run into each other on an 8-inch plot
    assert labels(4.5, 45, [5, 7, 8, 9, 10, 20, 30]) == ["5", "", "", "", "10", "20", "30"]
    # plain numbers, never 6e-02 or 5x10^-1
    assert labels(0.045, 0.45, [0.05, 0.06, 0.1, 0.2]) == ["0.05", "", "0.1", "0.2"]
    assert labels(0.25, 1000, [0.5, 3, 10, 50, 70, 1000]) == ["0.5", "", "10", "50", "", "1000"]


def test_costs_from_different_devices_are_not_compared_silently(tmp_path):
    # Probe rows reused from a CPU run beside a fine-tune on a GPU: the advice quoted "1/N of
    # the cost" and the results table lined their seconds up as if from one machine.
    rows = [
        make_row("toy/logreg@pooled", acc=0.80, fit_seconds=1.0),
        make_row("toy/finetune:full", "finetune", acc=0.81, mode="full", fit_seconds=60),
    ]
    rows[0]["val_accuracy"], rows[1]["val_accuracy"] = 0.8, 0.85
    rows[1]["provenance"]["device"] = "cuda:0 (NVIDIA H100)"
    text = " ".join(recommendation(summarize(rows), n_boot=200))
    assert "The cheapest of these is toy/logreg@pooled" in text
    assert "different devices (cpu against cuda:0 (NVIDIA H100)): the ratio is not like" in text
    md = write_report(tmp_path, rows)["report.md"].read_text()
    assert "Costs were measured on 2 devices (cpu: toy/logreg@pooled; cuda:0 (NVIDIA H100)" in md
    one = copy.deepcopy(rows)
    one[1]["provenance"]["device"] = "cpu"
    assert "different devices" not in " ".join(recommendation(summarize(one), n_boot=200))
    assert (
        "Costs were measured on" not in write_report(tmp_path / "one", one)["report.md"].read_text()
    )


def test_a_fine_tune_on_several_processes_counts_each_ones_seconds(tmp_path):
    # A store filled by 4 torchrun ranks sums their seconds, while a 4-rank DDP fine-tune
    # recorded its wall seconds once: the fine-tune looked 4 times cheaper next to probes.
    rows = [
        make_row("toy/logreg@pooled", acc=0.80, fit_seconds=10.0),
        make_row("toy/finetune:full", "finetune", acc=0.81, mode="full", fit_seconds=15.0),
    ]
    rows[0]["val_accuracy"], rows[1]["val_accuracy"] = 0.8, 0.85  # the fine-tune is chosen
    rows[1]["world_size"] = 4
    summaries = summarize(rows)
    tune = next(s for s in summaries if s.kind == "finetune")
    cost = rows[1]["cost"]
    assert tune.cost("fit_seconds") == 4 * cost["fit_seconds"]
    assert tune.cost("total_seconds") == pytest.approx(
        cost["extraction_seconds"] + 4 * (cost["fit_seconds"] + cost["predict_seconds"])
    )
    # 13.1 s of probe against 15.1 wall seconds on 4 processes: the probe is the cheaper
    text = " ".join(recommendation(summaries, n_boot=200))
    assert "The cheapest of these is toy/logreg@pooled, at 1/4.6 of the cost" in text
    md = write_report(tmp_path, rows)["report.md"].read_text()
    assert "count the seconds of each: toy/finetune:full (4)" in md
    one = copy.deepcopy(rows)
    one[1]["world_size"] = 1
    assert (
        "count the seconds of each"
        not in write_report(tmp_path / "1", one)["report.md"].read_text()
    )
