"""A pipeline's run folder and reuse rules hold under user mistakes: a folder in the place of
results.jsonl is named in one line, rows made under on_error = "skip" are not reused once the
pipeline says "fail"; heads refuse settings that fit nonsense (an infinite gamma, C or k), and a
saved head is not refused for a field of its layer that only one featpipe version records."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import test_trust_pipeline_9  # noqa: F401  (registers 'toy_white_nan9': NaN on white images)
import toy_backbone  # noqa: F401  (registers the 'toy' backbone)
from conftest import WHITE, digits_config, make_white_folder

from featpipe.errors import ConfigError, ImageReadError
from featpipe.heads import check_head_matches, load_head, make_head, save_head, select_and_fit
from featpipe.pipeline import config_from_dict, run_pipeline
from featpipe.report import read_results, write_report
from featpipe.report.results import ResultsFormatError
from featpipe.store import write_arrays


def digits_pipeline(tmp_path, probes: dict | None = None):
    return digits_config(tmp_path, "ten", probes)


def test_a_folder_named_results_jsonl_is_refused_in_one_line(tmp_path):
    # Before: IsADirectoryError, a traceback from read_results (featpipe run and report alike).
    (tmp_path / "run" / "results.jsonl").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"results.jsonl is a folder, where .* Move or rename"):
        run_pipeline(digits_pipeline(tmp_path), progress=False, log=lambda _: None)
    with pytest.raises(ResultsFormatError, match="is a folder"):
        read_results(tmp_path / "run" / "results.jsonl")


def test_rows_that_left_images_out_are_not_reused_under_on_error_fail(tmp_path):
    # Before: the kNN row made under "skip" (2 white images left out) was reused under "fail",
    # where `featpipe extract` refuses the very store it came from; on_error is not hashed.
    root = make_white_folder(tmp_path / "images")

    def run(on_error: str) -> list[str]:
        config = config_from_dict({
            "name": "skips", "n_boot": 40, "device": "cpu", "out": str(tmp_path / "run"),
            "source": {"data": str(root)},
            "features": {"backbones": ["toy_white_nan9"], "batch_size": 8, "workers": 0,
                         "cache_dir": str(tmp_path / "c"), "on_error": on_error},
            "probes": {"heads": ["knn"]},
        })  # fmt: skip
        said: list[str] = []
        run_pipeline(config, progress=False, log=said.append)
        return said

    run("skip")
    said: list[str] = []
    with pytest.raises(ImageReadError, match=rf"leaves out 2 images .*{WHITE[0]}"):
        said = run("fail")
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert plan["methods"][0]["all_images"] is True
    # Back under "skip" the row is reused again (a row made without skips always is).
    said = run("skip")
    assert "reusing finished kNN on layer pooled (seed 0)" in said
    assert len(read_results(tmp_path / "run" / "results.jsonl")) == 1


def test_a_reused_row_that_left_images_out_is_announced_so(tmp_path):
    root = make_white_folder(tmp_path / "images")
    base = {
        "name": "skips", "n_boot": 40, "device": "cpu", "out": str(tmp_path / "run"),
        "source": {"data": str(root)},
        "features": {"backbones": ["toy_white_nan9"], "batch_size": 8, "workers": 0,
                     "cache_dir": str(tmp_path / "c"), "on_error": "skip"},
        "probes": {"heads": ["knn"]},
    }  # fmt: skip
    run_pipeline(config_from_dict(base), progress=False, log=lambda _: None)
    said: list[str] = []
    base["features"]["on_error"] = "fail"
    with pytest.raises(ImageReadError):
        run_pipeline(config_from_dict(base), progress=False, log=said.append)
    assert (
        "recomputing kNN on layer pooled (seed 0): its row was made without 2 images "
        '(on_error = "skip"), where on_error is now "fail"; that row stays in results.jsonl '
        "as history"
    ) in said


def _rows(n: int = 30) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = np.arange(n) % 3
    return rng.normal(size=(n, 6)) + 3 * np.eye(3, 6)[y], y


@pytest.mark.parametrize(
    ("head", "param", "value", "match"),
    [
        ("rbf_svm", "gamma", float("inf"), r"gamma must be 'scale' or 'auto' or a positive finite"),
        ("rbf_svm", "gamma", 0.0, r"gamma must be .* got 0.0"),
        ("rbf_svm", "C", float("inf"), r"C must be a positive finite number; got inf"),
        ("rbf_svm_nystroem", "gamma", float("inf"), r"gamma must be 'scale' or a positive finite"),
        ("knn", "n_neighbors", float("inf"), r"n_neighbors must be >= 1, a whole number; got inf"),
        ("knn_faiss", "n_neighbors", float("inf"), r"n_neighbors must be >= 1, a whole number"),
    ],
)  # fmt: skip
def test_a_head_refuses_a_setting_that_fits_nonsense(head, param, value, match):
    # Before: gamma = 0 gave every image one prediction, C = inf a hard-margin SVC and
    # n_neighbors = inf a vote of the whole train split (all accepted); gamma = inf ended in
    # scikit-learn's own error (InvalidParameterError), not featpipe's.
    X, y = _rows()
    estimator = make_head(head, **{param: value})
    if "device" in estimator.get_params():
        estimator.set_params(device="cpu")
    with pytest.raises(ConfigError, match=match):
        estimator.fit(X, y)


def test_a_pipeline_grid_with_an_infinite_k_is_refused_at_the_check(tmp_path):
    grids = {"knn": {"n_neighbors": [1, float("inf")]}}
    config = digits_pipeline(tmp_path, {"heads": ["knn"], "grids": grids})
    with pytest.raises(ConfigError, match=r"probes.grids.knn.n_neighbors\[1\] = inf"):
        run_pipeline(config, progress=False, log=lambda _: None)


def test_a_saved_head_is_not_refused_for_a_layer_field_one_side_lacks(tmp_path, monkeypatch):
    # Before: the whole layer description was compared, so a field that another featpipe
    # version records (in the sidecar, or in what the store says) refused every valid head.
    X, y = _rows(54)
    splits = ["train"] * 30 + ["val"] * 12 + ["test"] * 12
    store = write_arrays(
        tmp_path / "s.h5", {"pooled": X.astype(np.float32)}, y, splits, list("abc")
    )
    result = select_and_fit("knn", store, "pooled", grid={"n_neighbors": [1]})
    _, sidecar = load_head(
        save_head(result.estimator, tmp_path / "h.skops", store=store, layer="pooled")
    )
    newer = {**sidecar, "features": {**sidecar["features"], "normalised": False}}
    check_head_matches(newer, store, "pooled")
    info = type(store).layer_info
    monkeypatch.setattr(type(store), "layer_info", lambda s, layer: {**info(s, layer), "new": 1})
    check_head_matches(sidecar, store, "pooled")
    # A field both record still counts, and a known one always does.
    with pytest.raises(Exception, match=r"features new: head 2, store 1"):
        check_head_matches(
            {**sidecar, "features": {**sidecar["features"], "new": 2}}, store, "pooled"
        )
    with pytest.raises(Exception, match=r"features dtype: head 'float16'"):
        check_head_matches(
            {**sidecar, "features": {**sidecar["features"], "dtype": "float16"}}, store, "pooled"
        )


def _lpft(start: float, last: float, probe: float, best_epoch: int = 1) -> dict:
    from test_report import make_row

    history = [
        {"epoch": 0, "train_loss": None, "val_loss": 0.6, "val_accuracy": start,
         "probe": {"C": 1.0, "val_accuracy": probe}},
        {"epoch": 1, "train_loss": 0.5, "val_loss": 0.55, "val_accuracy": max(start, last)},
        {"epoch": 2, "train_loss": 0.4, "val_loss": 0.6, "val_accuracy": last},
    ]  # fmt: skip
    row = make_row("toy/finetune:lpft", "finetune", acc=0.8, mode="lpft", history=history)
    row["val_accuracy"] = max(start, last)
    row["params"] = {"epochs": 2, "lr": 1e-3, "backbone_lr_scale": 1.0, "best_epoch": best_epoch}
    return row


def _warnings(rows: list[dict], n_val: int | None) -> list[str]:
    from featpipe.evaluate.leakage import DataChecks
    from featpipe.report.content import build_document
    from featpipe.report.markdown import render_markdown

    ids = [str(i) for i in range(120)]  # make_row's test ids
    counts = {"train": 600, "val": n_val, "test": 120} if n_val else {}
    checks = DataChecks("content", [], [], None, {}, ids, counts=counts)
    md = render_markdown(build_document(rows, n_boot=40, checks=checks))
    return [line for line in md.splitlines() if "looks broken" in line]


@pytest.mark.parametrize(
    ("start", "last", "probe"),
    [(0.799, 0.797, 0.79), (0.80, 0.80, 0.803)],
    ids=["last-epoch-one-image-below-its-start", "end-one-image-below-the-probe"],
)
def test_a_validation_gap_within_noise_is_not_warned_as_broken(start, last, probe):
    # Before: "looks broken: its last epoch ends below its own starting point on validation
    # (79.7 % after epoch 2, 79.9 % at epoch 0)", a gap of one image in 360 (the README demo's
    # warning), and likewise 80.0 % against the probe's 80.3 %.
    assert _warnings([_lpft(start, last, probe)], n_val=360) == []


def test_a_clear_validation_drop_is_still_warned_as_broken():
    assert len(_warnings([_lpft(0.80, 0.70, 0.79)], n_val=360)) == 1
    assert len(_warnings([_lpft(0.80, 0.80, 0.90)], n_val=360)) == 1
    # Without a validation count (no data checks) any gap is warned, as before.
    assert len(_warnings([_lpft(0.799, 0.797, 0.79)], n_val=None)) == 1


@pytest.mark.parametrize("name", ["plan.json", "config.json", "report.md", "checks.json", "plots"])
def test_a_run_folder_entry_of_the_wrong_kind_is_refused_before_any_job(tmp_path, name):
    # Before: plan.json or config.json as a folder ended in IsADirectoryError (a traceback)
    # from the atomic write; report.md or checks.json as a folder, or plots as a file, only
    # after every job had run.
    path = tmp_path / "run" / name
    if name == "plots":
        path.parent.mkdir(parents=True)
        path.write_text("not a folder")
    else:
        path.mkdir(parents=True)
    said: list[str] = []
    with pytest.raises(ConfigError, match=rf"{name} is a (folder|file), where featpipe writes"):
        run_pipeline(digits_pipeline(tmp_path), progress=False, log=said.append)
    assert said == [] and not (tmp_path / "run" / "results.jsonl").exists()
    if name != "config.json":  # featpipe run writes it, not the report
        with pytest.raises(ConfigError, match=rf"{name} is a"):
            write_report(tmp_path / "run", rows=[])


@pytest.mark.parametrize("second", ["pooled + stage1", "stage1+pooled"])
def test_one_joined_layer_written_two_ways_is_refused(tmp_path, second):
    # Before: both were accepted (the duplicate check compared the text), and the same probes
    # ran twice on the same features, as two methods of the report.
    with pytest.raises(
        ConfigError,
        match=rf"probes.layers\[1\] = '{re.escape(second)}' joins the layers of "
        r"probes.layers\[0\] = 'pooled\+stage1'; list each layer or join once",
    ):
        config_from_dict({
            "name": "joins", "out": str(tmp_path / "run"), "source": {"data": "digits"},
            "features": {"backbones": ["toy"], "layers": ["pooled", "stage1"]},
            "probes": {"heads": ["knn"], "layers": ["pooled+stage1", second]},
        })  # fmt: skip


def test_a_layer_name_with_spaces_is_refused_before_extraction(tmp_path):
    # Before: ' pooled' passed the check (its part, stripped, is extracted) and the probe
    # failed after the extraction: "Unknown layer ' pooled'. Did you mean: 'pooled'?".
    with pytest.raises(ConfigError, match=r"probes.layers\[0\] = ' pooled' has spaces around"):
        digits_pipeline(tmp_path, {"heads": ["knn"], "layers": [" pooled"]})


def test_an_extracted_layer_name_with_spaces_is_refused_for_what_it_is(tmp_path):
    # Before: "probes.layers[0]: layer 'pooled' is not extracted. Did you mean: 'pooled '?
    # Add it to features.layers (pooled )."
    with pytest.raises(ConfigError, match=r"features.layers\[0\] = 'pooled ' has spaces around"):
        config_from_dict({
            "name": "spaces", "out": str(tmp_path / "run"), "source": {"data": "digits"},
            "features": {"backbones": ["toy"], "layers": ["pooled "]},
            "probes": {"heads": ["knn"]},
        })  # fmt: skip


def test_the_nystroem_svm_counts_its_landmarks_and_linear_svm_as_parameters():
    # Before: 0 trainable params in the cost table (as for kNN): its numbers are in its parts.
    from featpipe.pipeline.stages.probe import head_parameters

    X, y = _rows(30)
    head = make_head("rbf_svm_nystroem", n_components=10, device="cpu").fit(X, y)
    clf = head.classifier_
    assert head_parameters(head) == 10 * 6 + clf.linear_.coef_.size + clf.linear_.intercept_.size
