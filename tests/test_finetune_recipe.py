"""The recipe's other knobs: the mse loss, the grid over lr / weight decay / dropout, and the
from-scratch baseline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from finetune_child import synthetic_source

from featpipe.backbones import get_backbone
from featpipe.data import ImageSource
from featpipe.errors import ConfigError
from featpipe.finetune import Callback, FineTuner, Mode
from featpipe.finetune.search import check_grid, fit_grid, searchable_params


def tuner(**kw) -> FineTuner:
    params = dict(epochs=2, batch_size=8, lr=0.05, patience=None, verbose=0, seed=0)
    return FineTuner(**{"backbone": "toy", **params, **kw})


@pytest.fixture(scope="module")
def source():
    return synthetic_source()


class RecordingSource(ImageSource):
    """Delegates to ``parent`` and records every row it loads, in order."""

    def __init__(self, parent: ImageSource):
        self.parent, self.loaded = parent, []
        self.classes, self.ids = parent.classes, parent.ids
        self.labels, self.splits = parent.labels, parent.splits

    def load(self, index: int):
        self.loaded.append(int(index))
        return self.parent.load(index)

    def _fingerprint_parts(self, content: bool):
        return self.parent._fingerprint_parts(content)


def test_mse_loss_trains(source):
    ft = tuner(loss="mse", epochs=3, lr=0.2).fit(source)
    losses = [h["train_loss"] for h in ft.history_[1:]]
    assert losses[-1] < losses[0]
    assert max(h["val_accuracy"] for h in ft.history_) >= 0.8  # chance: 1/3
    # The metrics are the same code for both losses: val_loss stays the log loss.
    assert ft.history_[-1]["val_loss"] > 0


def test_mse_is_squared_error_between_softmax_and_one_hot():
    ft = tuner(loss="mse", label_smoothing=0.0)
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    labels = torch.tensor([0, 2])
    p = torch.softmax(logits, 1)
    expected = ((p - torch.eye(3)[labels]) ** 2).sum(1).mean()
    assert torch.allclose(ft._loss(logits, labels), expected)


def test_unknown_loss_is_refused(source):
    with pytest.raises(ConfigError, match="Valid losses: cross_entropy, mse"):
        tuner(loss="hinge").fit(source)


@pytest.mark.parametrize(
    ("setting", "match"),
    [
        ({"optimizer": "adamx"}, "Unknown optimizer 'adamx'. Valid optimizers: sgd, adamw"),
        ({"augment": "flip"}, "Unknown augment 'flip'. Valid: standard, none"),
        ({"momentum": -1}, r"momentum must be a number in \[0, 1\); got -1\."),
        ({"warmup_epochs": -0.5}, "warmup_epochs must be a number >= 0; got -0.5"),
        ({"lr": float("nan")}, "lr must be a number > 0; got nan"),
        # Values of another type (a TOML string, a typo in Python) name the setting.
        ({"lr": ".05"}, r"lr must be a number > 0; got '\.05' \(a str\)"),
        ({"patience": "3"}, r"patience must be an integer >= 0 or None \(0 or None: no .*'3'"),
        ({"dropout": "0.5"}, r"dropout must be a number in \[0, 1\); got '0.5' \(a str\)"),
        ({"image_size": "x"}, r"image_size must be an integer >= 8 or None .*; got 'x'"),
        ({"label_smoothing": None}, r"label_smoothing must be a number in \[0, 1\); got None"),
        ({"val_fraction": "0.1"}, r"val_fraction must be a number in \[0, 1\); got '0.1'"),
        ({"seed": -1}, "seed must be an integer >= 0; got -1"),
        ({"workers": -1}, r"workers must be an integer >= 0 \(0: .*; got -1"),
        ({"workers": 1.0}, "workers must be an integer >= 0 .*; got 1.0"),
    ],
)
def test_settings_are_checked_before_anything_runs(setting, match):
    # A pipeline checks every setting this way before its first job computes anything.
    with pytest.raises(ConfigError, match=match):
        tuner(**setting)._check_params()


@pytest.mark.parametrize("value", ["Auto", "0.1", -1.0, 0, float("inf"), True, None])
def test_probe_c_is_auto_or_a_positive_number(value):
    # Checked up front: LP-FT computes the probe's features before it reads probe_C.
    with pytest.raises(ConfigError, match=r"probe_C must be 'auto' .* or a positive number"):
        tuner(mode="lpft", probe_C=value)._check_params()
    for valid in ("auto", 0.5, np.float32(2.0), 3):
        tuner(mode="lpft", probe_C=valid)._check_params()


def test_cli_probe_c_is_auto_or_a_positive_number(split_image_folder, tmp_path, capsys):
    from featpipe.cli import main

    args = "finetune --backbone toy --mode lpft --epochs 1 --batch-size 4 --no-progress"
    where = ["--data", str(split_image_folder), "--run-dir", str(tmp_path / "run")]
    for value in ("Auto", "-1", "nan"):
        with pytest.raises(SystemExit) as stop:
            main([*args.split(), *where, "--probe-C", value])
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert "--probe-C: must be auto (chosen on val) or a positive number" in err
        assert f"got {value!r}" in err


def test_numpy_integers_are_integers(source, tmp_path):
    ints = {"epochs": np.int64(1), "batch_size": np.int64(8), "workers": np.int64(0)}
    ft = tuner(**ints, run_dir=tmp_path).fit(source)
    assert ft.history_[-1]["epoch"] == 1
    # Its checkpoint holds plain numbers: the same run with Python ints resumes from it.
    again = tuner(epochs=1, batch_size=8, run_dir=tmp_path).fit(source)
    assert again.start_epoch_ == 1


def test_grid_chooses_on_val_and_test_is_read_once_for_the_winner(source):
    recording = RecordingSource(source)
    grid = {"lr": [1e-6, 0.1], "weight_decay": [1e-4]}
    result = fit_grid(tuner(epochs=2), recording, grid)
    test_rows = set(np.flatnonzero(source.splits == 2).tolist())
    assert not test_rows & set(recording.loaded)  # two fits, no test image
    assert len(result.curve) == 2
    scores = [s for _, s in result.curve]
    assert result.params == result.curve[int(np.argmax(scores))][0]
    assert float(result.best.best_score_[0]) == max(scores)
    assert result.params["lr"] == 0.1  # lr 1e-6 cannot move from chance in two epochs
    assert result.fit_seconds >= result.best.fit_seconds_

    before = len(recording.loaded)
    result.best.predict_proba("test")
    read = recording.loaded[before:]
    assert sorted(read) == sorted(test_rows)  # each test image once, for the winner only


def test_grid_candidates_are_checked_before_any_trains(source):
    recording = RecordingSource(source)
    with pytest.raises(ConfigError, match=r"grid candidate \{'lr': 'fast'\}: lr must be a number"):
        fit_grid(tuner(epochs=1), recording, {"lr": [0.01, "fast"]})
    with pytest.raises(ConfigError, match=r"\{'patience': -1\}: patience .* or None \(0 or"):
        fit_grid(tuner(epochs=1), recording, {"patience": [3, -1]})
    assert recording.loaded == []  # no candidate trained


def test_cli_grid_reads_values_as_the_flags_do(split_image_folder, tmp_path, capsys):
    from featpipe.cli import main
    from featpipe.cli.finetune import parse_grid

    # --patience 0 is "never stop", and --lr .05 a number: the same in a grid.
    grid = parse_grid(["patience=3,0", "lr=.05,1e-3", "augment=none"])
    assert grid == {"patience": [3, None], "lr": [0.05, 1e-3], "augment": ["none"]}
    run_dir = tmp_path / "run"
    args = "finetune --backbone toy --epochs 1 --batch-size 4 --no-progress --grid lr=0.01,1e-3x"
    where = ["--data", str(split_image_folder), "--run-dir", str(run_dir)]
    assert main([*args.split(), *where]) == 2
    err = capsys.readouterr().err
    assert "--grid candidate {'lr': '1e-3x'}: lr must be a number > 0; got '1e-3x'" in err
    assert not run_dir.exists()  # refused before the data was opened


class Epochs(Callback):
    def __init__(self):
        self.seen = []

    def on_epoch_end(self, tuner, logs):
        self.seen.append(logs["epoch"])


def test_grid_candidates_report_to_the_callers_callbacks(source):
    watcher = Epochs()
    result = fit_grid(tuner(epochs=1, callbacks=[watcher]), source, {"lr": [0.01, 0.05]})
    assert watcher.seen == [0, 1, 0, 1]  # each candidate's epochs, not a copy's
    assert result.best.callbacks == [watcher]


@pytest.mark.parametrize("name", ["val_fraction", "seed"])
def test_a_grid_does_not_search_what_chooses_the_val_rows(name):
    with pytest.raises(ConfigError, match=rf"grid\.{name}: .*compared on the same validation rows"):
        check_grid({name: [0.1, 0.5] if name == "val_fraction" else [0, 1]})
    assert name not in searchable_params()


def test_grid_keys_are_checked():
    check_grid({"lr": [0.1], "weight_decay": [0.0], "dropout": [0.0, 0.5]})
    with pytest.raises(ConfigError, match="Did you mean: 'lr'"):
        check_grid({"lrr": [0.1]})
    with pytest.raises(ConfigError, match="not a searchable"):
        check_grid({"mode": ["full"]})
    with pytest.raises(ConfigError, match="non-empty array"):
        check_grid({"lr": []})


def test_dropout_is_searchable_and_sits_in_front_of_the_head(source):
    result = fit_grid(tuner(epochs=1), source, {"dropout": [0.0, 0.6]})
    assert [p["dropout"] for p, _ in result.curve] == [0.0, 0.6]
    ft = tuner(epochs=1, dropout=0.6).fit(source)
    head = ft.model_.get_submodule(ft.head_)
    assert isinstance(head[0], torch.nn.Dropout) and head[0].p == 0.6


def test_scratch_starts_from_random_not_pretrained_weights(source):
    pretrained = get_backbone("toy@7").model.state_dict()  # 'toy@7': weights seeded 7
    scratch = tuner(backbone="toy@7", mode="scratch", epochs=0).fit(source)
    random_init = get_backbone("toy@none").model.state_dict()
    state = scratch.model_.state_dict()
    convs = [k for k in pretrained if k.startswith("stem.0")]
    for key in convs:
        assert not torch.equal(state[key], pretrained[key])
        assert torch.equal(state[key], random_init[key])
    assert "@none" in scratch.backbone_.spec
    # The same build in any other mode starts from the pretrained weights.
    full = tuner(backbone="toy@7", mode="full", epochs=0).fit(source)
    for key in convs:
        assert torch.equal(full.model_.state_dict()[key], pretrained[key])


def test_scratch_trains_everything_at_the_head_rate(source):
    ft = tuner(backbone="toy@7", mode="scratch", epochs=1, backbone_lr_scale=0.1).fit(source)
    assert Mode.parse("scratch") == Mode("scratch") and not Mode("scratch").pretrained
    assert ft.trainable_params_ == sum(p.numel() for p in ft.model_.parameters())
    assert {g["initial_lr"] for g in ft.optimizer_.param_groups} == {0.05}


def test_cli_finetune_grid_loss_and_scratch(split_image_folder, tmp_path, capsys):
    from featpipe.cli import main
    from featpipe.report import read_results

    run_dir = tmp_path / "run"
    args = [
        *[
            "finetune",
            "--backbone",
            "toy",
            "--mode",
            "scratch",
            "--loss",
            "mse",
            "--epochs",
            "1",
            "--batch-size",
            "4",
        ],
        *["--no-progress", "--grid", "lr=1e-6,0.1", "--grid", "dropout=0.5"],
    ]
    where = ["--data", str(split_image_folder), "--run-dir", str(run_dir)]
    assert main([*args, *where]) == 0
    assert "grid: 2 settings, chosen on val: " in capsys.readouterr().out
    (row,) = read_results(run_dir / "results.jsonl")
    assert len(row["curve"]) == 2 and row["params"]["loss"] == "mse"
    best = max(row["curve"], key=lambda c: c["score"])  # first of equals, as chosen
    assert {k: row["params"][k] for k in ("lr", "dropout")} == best["params"]
    assert row["provenance"]["backbone"]["spec"] == "toy@none"
    assert main([*args, "--grid", "lrr=0.1", *where]) == 2
    assert "Did you mean: 'lr'?" in capsys.readouterr().err


def test_patience_0_is_no_early_stopping_also_in_a_pipeline():
    # TOML has no None: a pipeline says "never stop early" as --patience does, with 0.
    import toy_backbone  # noqa: F401

    from featpipe.finetune.callbacks import EarlyStopping
    from featpipe.pipeline import config_from_dict
    from featpipe.pipeline.validate import check_models

    stops = [c for c in tuner(patience=0)._callbacks() if isinstance(c, EarlyStopping)]
    assert stops == [] and len(tuner(patience=2)._callbacks()) == 1
    raw = {"source": {"data": "digits"}, "features": {"backbones": ["toy"]}}
    raw["finetune"] = {"modes": ["head"], "patience": 0, "grid": {"patience": [2, 0]}}
    check_models(config_from_dict(raw))
