"""results.jsonl schema, reading/repair, and reports rebuilt from the results alone."""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import re

import numpy as np
import pytest

from featpipe.cli import main
from featpipe.evaluate import compute_metrics
from featpipe.report import (
    SCHEMA_VERSION,
    MethodKind,
    PlannedRun,
    ResultsFormatError,
    RunPlan,
    append_result,
    ids_sha256,
    read_results,
    validate_row,
    write_report,
)
from featpipe.report import results as results_module
from featpipe.report.summary import best, latest_rows, summarize

CLASSES = ["a", "b", "c", "d", "e", "f"]


def make_row(
    method,
    kind="probe",
    acc=0.8,
    seed=0,
    layer="pooled",
    head="logreg",
    mode=None,
    fit_seconds=1.0,
    n=120,
    history=None,
):
    """A schema-valid row whose test predictions are right with probability ``acc``."""
    rng = np.random.default_rng(seed + len(method))
    y = np.arange(n) % len(CLASSES)
    pred = np.where(rng.random(n) < acc, y, (y + 1) % len(CLASSES))
    proba = np.full((n, len(CLASSES)), 0.04)
    proba[np.arange(n), pred] = 0.8
    probe = kind == "probe"
    return {
        "schema_version": SCHEMA_VERSION,
        "run": "unit",
        "method": method,
        "kind": kind,
        "label": method,
        "backbone": "toy",
        "layer": layer if probe else None,
        "head": head if probe else None,
        "mode": mode,
        "seed": seed,
        "config_hash": "h",
        "created": "2025-01-01T00:00:00+00:00",
        "classes": CLASSES,
        "metrics": compute_metrics(y, proba, CLASSES, n_boot=100, seed=seed),
        "val_accuracy": acc,
        "params": {"C": 1.0},
        "curve": None,
        "history": history,
        "cost": {
            "extraction_seconds": 3.0 if probe else 0.0,
            "extraction_reused": False,
            "fit_seconds": fit_seconds,
            "predict_seconds": 0.1,
            "total_seconds": (3.0 if probe else 0.0) + fit_seconds + 0.1,
            "images_per_s": 50.0,
            "peak_host_bytes": 2**27,
            "peak_device_bytes": None,
            "trainable_params": 10,
        },
        "test": {
            "ids_sha256": ids_sha256(map(str, range(n))),
            "y_true": y.tolist(),
            "y_pred": pred.tolist(),
        },
        "provenance": {
            "backbone": {"spec": "toy", "weights_sha256": "ab12"},
            "device": "cpu",
            "store": {"path": "s.h5", "key": "k"},
        },
    }


HISTORY = [
    {"epoch": 1, "train_loss": 1.2, "val_loss": 1.0, "val_accuracy": 0.6},
    {"epoch": 2, "train_loss": 0.7, "val_loss": 0.8, "val_accuracy": 0.8},
]


def make_rows():
    return [
        make_row("toy/logreg@pooled", acc=0.8),
        make_row("toy/knn@pooled", acc=0.6, head="knn"),
        make_row("toy/logreg@stage1", acc=0.5, layer="stage1"),
        make_row("toy/knn@stage1", acc=0.45, layer="stage1", head="knn"),
        make_row(
            "toy/finetune:full", "finetune", acc=0.95, mode="full", fit_seconds=60, history=HISTORY
        ),
        make_row(
            "toy/finetune:full",
            "finetune",
            acc=0.93,
            seed=1,
            mode="full",
            fit_seconds=60,
            history=HISTORY,
        ),
    ]


@pytest.fixture
def rows():
    return make_rows()


def test_valid_rows_pass_and_round_trip(tmp_path, rows):
    path = tmp_path / "results.jsonl"
    for row in rows:
        append_result(path, row)
    assert read_results(path) == json.loads(json.dumps(rows))


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda r: r.pop("metrics"), "missing field 'metrics'"),
        (lambda r: r.update(seed="0"), "'seed' must be int"),
        (lambda r: r.update(seed=True), "'seed' must be int"),
        (lambda r: r.update(kind="probe2"), "kind 'probe2'"),
        (lambda r: r.update(schema_version=99), "schema_version 99"),
        (lambda r: r["cost"].pop("fit_seconds"), "cost: missing field 'fit_seconds'"),
        (lambda r: r["test"]["y_pred"].pop(), "disagree"),
        (lambda r: r["metrics"]["confusion"].pop(), "confusion must be 6×6"),
    ],
)
def test_schema_violations_name_the_field(rows, mutate, match):
    row = copy.deepcopy(rows[0])
    mutate(row)
    with pytest.raises(ResultsFormatError, match=match):
        validate_row(row)


def test_schema_is_documented_for_every_field():
    doc = results_module.__doc__
    for name in (f.name for f in dataclasses.fields(results_module.ResultRow)):
        assert f"``{name}``" in doc, name


def test_partial_last_line_is_skipped_and_repaired(tmp_path, rows):
    path = tmp_path / "results.jsonl"
    for row in rows[:2]:
        append_result(path, row)
    with path.open("a") as fh:
        fh.write(json.dumps(rows[2])[:50])  # an interrupted write
    with pytest.warns(UserWarning, match="partial last line"):
        assert len(read_results(path, repair=True)) == 2
    append_result(path, rows[3])
    assert [r["method"] for r in read_results(path)] == [rows[i]["method"] for i in (0, 1, 3)]


def test_bad_line_in_the_middle_is_an_error(tmp_path, rows):
    path = tmp_path / "results.jsonl"
    path.write_text("{not json\n" + json.dumps(rows[0]) + "\n")
    with pytest.raises(ResultsFormatError, match=r"results.jsonl:1"):
        read_results(path)


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    """A run folder with results.jsonl and the reports written from it (rendered once)."""
    folder = tmp_path_factory.mktemp("run")
    for row in make_rows():
        append_result(folder / "results.jsonl", row)
    write_report(folder)
    return folder


def test_report_contents(report_dir):
    md = (report_dir / "report.md").read_text()
    assert "| toy/logreg@pooled | 0 |" in md
    assert "toy/finetune:full | 0, 1 |" in md  # two seeds aggregated on one line
    # the fine-tune against the best probe only (none is tied with it), with the CI wording;
    # every pair in the appendix's matrix
    (paired,) = [ln for ln in md.splitlines() if ln.startswith("- toy/finetune:full beats")]
    assert "toy/logreg@pooled by" in paired and "95 % CI" in paired and "McNemar p" in paired
    assert md.index("## Recommendation") < md.index("## Results")
    appendix = md[md.index("## Appendix: All paired comparisons") :]
    assert "| 5. toy/finetune:full | +13.3\\* |" in appendix  # a literal *, escaped
    # four probes share one 3 s extraction: counted once in the run's total
    assert "whole run: 127.6 s = extraction 3.0 s + fitting 124.0 s + prediction 0.6 s" in md
    for name in (
        "accuracy_by_method",
        "accuracy_vs_cost",
        "accuracy_by_layer",
        "finetune_curves",
        "confusion_probe",
        "confusion_finetune",
    ):
        assert f"plots/{name}.png" in md
        assert (report_dir / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ab12" in md  # provenance: weights hash


def test_html_is_self_contained(report_dir):
    html = (report_dir / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == 6
    assert all(base64.b64decode(i)[:4] == b"\x89PNG" for i in images)
    assert not re.search(r'(src|href)="(?!data:)', html)  # nothing loaded from elsewhere


def test_featpipe_report_rebuilds_the_same_report(report_dir, tmp_path, capsys):
    rebuilt = tmp_path / "copy"
    rebuilt.mkdir()
    (rebuilt / "results.jsonl").write_bytes((report_dir / "results.jsonl").read_bytes())
    assert main(["report", str(rebuilt)]) == 0
    assert "report.html" in capsys.readouterr().out
    for name in ("report.md", "report.html", "plots/accuracy_vs_cost.png"):
        assert (rebuilt / name).read_bytes() == (report_dir / name).read_bytes(), name


def test_single_layer_run_has_no_layer_plot(tmp_path):
    rows = [r for r in make_rows() if r["layer"] != "stage1" and r["kind"] == "probe"]
    written = write_report(tmp_path, rows)
    assert "accuracy_by_layer" not in written and "finetune_curves" not in written
    md = written["report.md"].read_text()
    # Without fine-tunes, the best probe is compared with the others.
    assert "toy/logreg@pooled beats toy/knn@pooled" in md


def test_latest_row_per_method_and_seed_wins():
    old = make_row("toy/logreg@pooled", acc=0.2)
    new = make_row("toy/logreg@pooled", acc=0.9)
    new["config_hash"] = "changed"
    summaries = summarize(latest_rows([old, make_row("toy/knn@pooled", head="knn"), new]))
    assert [s.method for s in summaries] == ["toy/logreg@pooled", "toy/knn@pooled"]
    assert summaries[0].rows == [new]


def test_featpipe_report_without_results(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "No results.jsonl" in capsys.readouterr().err


def _label_boxes(ax, points, labels, offsets, fontsize=7):
    per_point = ax.figure.dpi / 72
    boxes = []
    for (x, y), (dx, dy), text in zip(points, offsets, labels, strict=True):
        px, py = ax.transData.transform((x, y)) / per_point
        width = 0.6 * fontsize * len(text)
        left = px + dx if dx >= 0 else px + dx - width
        boxes.append((left, py + dy, left + width, py + dy + fontsize + 2))
    return boxes


def test_point_labels_that_would_collide_are_moved_apart():
    from matplotlib.figure import Figure

    from featpipe.report.plots import _overlap, label_offsets

    ax = Figure(figsize=(8, 5)).add_subplot()
    points = [(3.5, 98.1), (3.6, 98.1), (3.7, 98.0), (20.0, 90.0), (5.0, 60.0)]
    labels = ["logistic regression on layer blocks.5:avg"] * 3 + ["lonely at the right", "alone"]
    ax.scatter(*zip(*points, strict=True))
    ax.set_xscale("log")
    offsets = label_offsets(ax, points, labels, fontsize=7)
    assert offsets[4] == (4.0, 2.0)  # nothing near it: the usual place
    assert offsets[3] == (-4.0, 2.0)  # at the right edge: left of its point
    dys = sorted(dy for _, dy in offsets[:3])
    assert dys[2] - dys[1] >= 9 and dys[1] - dys[0] >= 9  # a line apart (fontsize + 2)
    boxes = _label_boxes(ax, points, labels, offsets)
    assert not any(_overlap(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])


def test_point_labels_stay_inside_the_axes():
    from matplotlib.figure import Figure

    from featpipe.report.plots import label_offsets

    ax = Figure(figsize=(8, 5)).add_subplot()
    # A crowded bottom-left corner and a point in the bottom-right one.
    points = [(3.0 + 0.01 * i, 30.0 + 0.2 * i) for i in range(6)] + [(30.0, 31.0), (3.0, 99.0)]
    labels = [f"method number {i} on layer blocks.5:avg" for i in range(len(points))]
    ax.scatter(*zip(*points, strict=True))
    ax.set_xscale("log")
    offsets = label_offsets(ax, points, labels, fontsize=7)
    x0, y0, x1, y1 = (v / (ax.figure.dpi / 72) for v in ax.bbox.extents)
    for left, bottom, right, top in _label_boxes(ax, points, labels, offsets):
        assert x0 <= left and right <= x1 and y0 <= bottom and top <= y1


def test_cost_plot_labels_the_frontier_and_the_best_finetune():
    from featpipe.report.plots import labelled_points
    from featpipe.report.results import MethodKind
    from featpipe.report.summary import MethodSummary

    def method(name, kind, top1, seconds):
        row = {"seed": 0, "metrics": {"top1": top1, "ci": {}}, "cost": {"total_seconds": seconds}}
        return MethodSummary(name, name, kind, "toy", None, None, None, [row])

    probe, tune = MethodKind.PROBE, MethodKind.FINETUNE
    methods = [
        method("cheap", probe, 0.80, 1.0),  # frontier: the cheapest
        method("better", probe, 0.90, 2.0),  # frontier
        method("dominated", probe, 0.85, 3.0),  # "better" is cheaper and more accurate
        method("tie-but-dearer", probe, 0.90, 2.5),  # as accurate as "better", dearer
        method("best", probe, 0.95, 10.0),  # frontier: the most accurate
        method("tune-a", tune, 0.70, 30.0),
        method("tune-b", tune, 0.88, 40.0),  # the best fine-tune, off the frontier
    ]
    assert [methods[i].method for i in labelled_points(methods)] == [
        "cheap", "better", "best", "tune-b"
    ]  # fmt: skip


def test_best_probe_is_chosen_by_validation_not_test(tmp_path):
    # logreg is best on test but worse on validation: test must not choose it.
    rows = [
        make_row("toy/logreg@pooled", acc=0.9),
        make_row("toy/knn@pooled", acc=0.6, head="knn"),
        make_row("toy/mlp@pooled", acc=0.5, head="mlp"),
    ]
    rows[0]["val_accuracy"], rows[1]["val_accuracy"], rows[2]["val_accuracy"] = 0.70, 0.75, 0.75
    summaries = summarize(rows)
    assert best(summaries, "probe").method == "toy/knn@pooled"  # ties: the first listed
    md = write_report(tmp_path, rows)["report.md"].read_text()
    assert "Confusion matrix of the best probe by validation accuracy: toy/knn@pooled" in md
    assert "| class | toy/knn@pooled |" in md
    # the reference is knn, against the runner-up on validation (mlp), not the best on test
    assert "- toy/knn@pooled beats toy/mlp@pooled" in md
    assert "- toy/knn@pooled trails" not in md
    assert best(summaries, "finetune") is None


def test_comparisons_use_the_plan_n_boot(tmp_path):
    rows = [make_row("toy/logreg@pooled", acc=0.8), make_row("toy/knn@pooled", acc=0.6)]
    plan = RunPlan("unit", [PlannedRun(r["method"], 0, "h") for r in rows], n_boot=0)
    md = write_report(tmp_path, rows, plan)["report.md"].read_text()
    assert "McNemar's test (no interval: n_boot is 0)" in md
    (sentence,) = [ln for ln in md.splitlines() if ln.startswith("- toy/logreg@pooled")]
    assert "95 % CI" not in sentence and "McNemar p=" in sentence
    plan = RunPlan("unit", plan.methods, n_boot=200)
    md = write_report(tmp_path, rows, plan)["report.md"].read_text()
    assert "Newcombe's 95 % interval" in md


def test_report_keeps_to_the_rows_of_the_plan(tmp_path):
    old = make_row("toy/logreg@pooled", acc=0.3)
    old["config_hash"] = "old"
    rows = [old, make_row("toy/logreg@pooled", acc=0.8), make_row("toy/knn@pooled", head="knn")]
    plan = RunPlan(
        "unit",
        [
            PlannedRun("toy/logreg@pooled", 0, "h", "logistic regression"),
            PlannedRun("toy/mlp@pooled", 0, "h", "MLP"),
        ],
    )
    md = write_report(tmp_path, rows, plan)["report.md"].read_text()
    # the plan names the methods: its label, not the row's
    assert "| logistic regression | 0 |" in md
    assert "toy/knn@pooled" not in md  # not in the plan
    assert "1 of 2 method runs of the current configuration has no result yet: MLP (seed 0)" in md
    assert "also holds 2 rows of earlier configurations" in md
    cells = next(ln for ln in md.splitlines() if ln.startswith("| logistic regression |"))
    assert f"{100 * rows[1]['metrics']['top1']:.1f} (" in cells


def test_seeds_that_change_nothing_show_no_spread(tmp_path):
    a = make_row("toy/knn@pooled", head="knn")
    b = copy.deepcopy(a)
    b["seed"] = 1
    once = make_row("toy/logreg@pooled")
    once["deterministic"] = True
    md = write_report(tmp_path, [a, b, once])["report.md"].read_text()
    assert "| toy/knn@pooled | 0, 1 (identical) |" in md
    assert "| toy/logreg@pooled | 0 (deterministic) |" in md
    assert "± 0.0" not in md


def test_result_row_round_trips_and_refuses_other_versions(tmp_path, rows):
    from featpipe.report import ResultRow

    row = ResultRow.from_json(rows[4])
    assert row.kind is MethodKind.FINETUNE and row.cost.fit_seconds == 60
    # the same keys and values (rows written before `deterministic` and `world_size` existed
    # read as False and 1)
    assert row.to_json() == {**rows[4], "deterministic": False, "world_size": 1}
    assert ResultRow.from_json(row.to_json()) == row
    path = tmp_path / "results.jsonl"
    append_result(path, row)
    newer = {**rows[0], "schema_version": SCHEMA_VERSION + 1}
    with path.open("a") as fh:
        fh.write(json.dumps(newer) + "\n")
    with pytest.raises(ResultsFormatError, match=r"results.jsonl:2: schema_version 2 is not sup"):
        read_results(path)
