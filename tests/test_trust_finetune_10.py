"""A fine-tune's checkpoint and row say what a partial:N fine-tune froze (a resume under
another stage list is refused, not a traceback); a refused fit leaves no lock file or folder
behind; files touched but unchanged resume under hash_contents; a training batch of one
image through batch norm that trains is refused before training."""

from __future__ import annotations

import os
import time

import pytest
import torch
import toy_backbone  # noqa: F401  (registers the 'toy' backbone)
from conftest import STAGES, hash_contents_config, make_image_folder, register_staged_toy
from finetune_child import synthetic_source
from test_finetune import tuner

from featpipe.cli import main as cli_main
from featpipe.data import open_source
from featpipe.errors import ConfigError, SourceError
from featpipe.finetune import ddp
from featpipe.finetune import tuner as tuner_module
from featpipe.pipeline import config_from_dict, run_pipeline
from featpipe.report import read_results

register_staged_toy("toy_staged10")


def _partial(run_dir, **kw):
    return tuner_module.FineTuner(
        "toy_staged10", mode="partial:1", epochs=1, batch_size=8, verbose=0, run_dir=run_dir, **kw
    )


def test_a_pipeline_check_refuses_a_partial_mode_beyond_the_stages(tmp_path):
    # Already so (validate._check_finetune freezes the checks' own model): a guard.
    config = config_from_dict({
        "name": "ten", "out": str(tmp_path / "run"), "device": "cpu",
        "source": {"data": "digits", "limits": {"train": 30, "val": 15, "test": 15}},
        "features": {"backbones": ["toy"], "workers": 0, "cache_dir": str(tmp_path / "c")},
        "probes": {"heads": ["knn"]},
        "finetune": {"modes": ["partial:99"], "workers": 0},
    })  # fmt: skip
    with pytest.raises(ConfigError, match=r"finetune.modes\[0\] \('partial:99' on toy\): Mode"):
        run_pipeline(config, progress=False, log=lambda _: None)
    assert not (tmp_path / "run").exists() and not (tmp_path / "c").exists()


def test_a_resume_under_another_stage_list_is_refused(tmp_path, monkeypatch):
    # Before: the checkpoint of the fine-tune that froze the stem was resumed as the one that
    # freezes stem and stage1 (stages are in no identity): ValueError from the optimiser.
    _partial(tmp_path / "ft").fit(synthetic_source())
    monkeypatch.setitem(STAGES, "toy_staged10", [("stem", "stage1"), "stage2"])
    with pytest.raises(ConfigError, match=r"frozen: checkpoint \['stem'\], now \['stem', 'stage1'"):
        _partial(tmp_path / "ft").fit(synthetic_source())


def test_a_partial_checkpoint_that_records_no_frozen_modules_still_resumes(tmp_path):
    done = _partial(tmp_path / "ft").fit(synthetic_source())
    last = tmp_path / "ft" / "last.pt"
    state = torch.load(last, weights_only=True)
    assert state["config"].pop("frozen") == ["stem"]
    torch.save(state, last)  # as an earlier featpipe wrote it
    again = _partial(tmp_path / "ft").fit(synthetic_source())
    assert again.history_ == done.history_


def test_featpipe_finetune_rows_record_the_frozen_modules(split_image_folder, tmp_path):
    # A pipeline's partial rows record them since 687e9c5; featpipe finetune's did not.
    run_dir = tmp_path / "ft"
    args = "finetune --backbone toy --epochs 1 --batch-size 4 --no-progress --mode partial:2"
    data = str(split_image_folder)
    assert cli_main([*args.split(), "--data", data, "--run-dir", str(run_dir)]) == 0
    [row] = read_results(run_dir / "results.jsonl")
    assert row["provenance"]["frozen"] == ["stem", "stage1"]


@pytest.mark.filterwarnings("ignore:In the splits given")  # classes without train rows
@pytest.mark.parametrize(
    ("counts", "error", "match"),
    [
        ({"n_train": 2, "n_val": 0}, ConfigError, "carves no val row"),
        ({"n_train": 0, "n_val": 3}, SourceError, "no train split"),
    ],
)
def test_a_fit_refused_before_training_leaves_nothing_behind(tmp_path, counts, error, match):
    # Before: the folders it made stayed, holding last.pt.lock.
    run_dir = tmp_path / "runs" / "a" / "ft"
    with pytest.raises(error, match=match):
        tuner(run_dir=run_dir).fit(synthetic_source(n_test=3, **counts))
    assert not (tmp_path / "runs").exists()


def test_featpipe_finetune_refused_in_the_fit_leaves_no_run_folder(tmp_path, capsys):
    # Refused after the fit took the run folder's lock: the folder stayed, holding it.
    data = make_image_folder(tmp_path / "img", per_class=2, splits=("train", "val", "test"))
    run_dir = tmp_path / "ft"
    args = "finetune --backbone toy --epochs 1 --batch-size 1 --no-progress"
    assert cli_main([*args.split(), "--data", str(data), "--run-dir", str(run_dir)]) == 2
    assert "Training batches of 1 image (6 train rows, batch_size 1)" in capsys.readouterr().err
    assert not run_dir.exists()


@pytest.mark.filterwarnings("ignore:In the splits given")  # classes without train rows
def test_a_refused_fit_keeps_what_an_earlier_run_made(tmp_path):
    run_dir = tmp_path / "ft"
    tuner(epochs=1, run_dir=run_dir).fit(synthetic_source())
    made = sorted(p.name for p in run_dir.iterdir())
    with pytest.raises(ConfigError, match="another configuration"):
        tuner(epochs=1, lr=0.5, run_dir=run_dir).fit(synthetic_source())
    assert sorted(p.name for p in run_dir.iterdir()) == made and "last.pt.lock" in made
    # A folder an earlier refused run left with its lock file alone: kept as it was.
    old = tmp_path / "old"
    old.mkdir()
    (old / "last.pt.lock").touch()
    with pytest.raises(SourceError):
        tuner(run_dir=old).fit(synthetic_source(n_train=0))
    assert [p.name for p in old.iterdir()] == ["last.pt.lock"]


def test_files_touched_but_unchanged_resume_under_hash_contents(tmp_path):
    # Before: the checkpoint recorded the sizes-and-mtimes fingerprint while the run folder
    # was keyed by the contents one: the touched files refused the resume ("written with
    # another configuration (source: ...) ... resume=False (CLI: --no-resume)"), which a
    # pipeline cannot do.
    data = make_image_folder(tmp_path / "img", per_class=4, splits=("train", "val", "test"))
    config = hash_contents_config(tmp_path, "ten", data)
    [row] = read_results(run_pipeline(config, progress=False, log=lambda _: None) / "results.jsonl")
    (tmp_path / "run" / "results.jsonl").write_text("")  # as if stopped after its checkpoint
    later = time.time() + 100
    for image in data.rglob("*.jpg"):
        os.utime(image, (later, later))
    said: list[str] = []
    out = run_pipeline(config, progress=False, log=said.append)
    [again] = read_results(out / "results.jsonl")
    assert again["test"] == row["test"] and len(list((out / "finetune").iterdir())) == 1


def test_a_checkpoint_of_file_times_resumes_under_a_given_fingerprint(tmp_path):
    # Checkpoints recorded before (sizes and mtimes) resume while the files are untouched,
    # under the fingerprint a pipeline now gives.
    source = make_image_folder(tmp_path / "img", per_class=4, splits=("train", "val", "test"))
    done = tuner(epochs=1, run_dir=tmp_path / "ft").fit(open_source(str(source)))
    again = tuner(epochs=1, run_dir=tmp_path / "ft").fit(
        open_source(str(source)), fingerprint="the caller's"
    )
    assert again.history_ == done.history_


def _nothing(device):
    from contextlib import nullcontext

    return nullcontext()


@pytest.mark.filterwarnings("ignore:In the splits given")  # classes without train rows
def test_a_training_batch_of_one_image_through_batch_norm_is_refused(monkeypatch):
    # Before: ValueError 'Expected more than 1 value per channel when training' mid-epoch
    # (1x1 feature maps at image_size 8), or a training on single-image batch statistics.
    # 2 train rows (one train row is of one class, refused before this check).
    source = synthetic_source(n_train=2, n_val=3, n_test=0)
    with pytest.raises(ConfigError, match=r"batches of 1 image \(2 train rows, batch_size 1\)"):
        tuner(image_size=8, batch_size=1).fit(source)
    with pytest.raises(ConfigError, match=r"batch_size 1\) through batch norm"):
        tuner(image_size=8, batch_size=1).fit(synthetic_source(n_train=6, n_test=0))
    # Under DDP: 2 train rows over 2 ranks, one each.
    monkeypatch.setattr(ddp, "active", lambda: True)
    monkeypatch.setattr(ddp, "world_size", lambda: 2)
    monkeypatch.setattr(ddp, "rank", lambda: 0)
    monkeypatch.setattr(tuner_module.ddp, "joined", _nothing)
    with pytest.raises(ConfigError, match=r"\(2 train rows over 2 ranks, batch_size 8\)"):
        tuner(image_size=8).fit(synthetic_source(n_train=2, n_val=3, n_test=0))


@pytest.mark.filterwarnings("ignore:In the splits given")  # classes without train rows
def test_a_batch_of_one_trains_where_batch_norm_is_frozen():
    source = synthetic_source(n_train=2, n_val=3, n_test=0)  # of 2 classes
    fitted = tuner(image_size=8, mode="bn", epochs=1, batch_size=1).fit(source)
    assert fitted.history_[1]["train_loss"] > 0


def test_featpipe_finetune_refused_removes_the_folders_above_the_run_folder_it_made(tmp_path):
    # Before: only the run folder went; runs/ and runs/a, made for it, stayed (empty).
    data = make_image_folder(tmp_path / "img", per_class=2, splits=("train", "val", "test"))
    run_dir = tmp_path / "runs" / "a" / "ft"
    args = "finetune --backbone toy --epochs 1 --batch-size 1 --no-progress"
    assert cli_main([*args.split(), "--data", str(data), "--run-dir", str(run_dir)]) == 2
    assert not (tmp_path / "runs").exists()


def test_a_pipeline_check_refuses_a_fine_tuning_batch_of_one_through_batch_norm(tmp_path):
    # Before: FineTuner refused it only once the fine-tune started, after extraction.
    def config(modes):
        return config_from_dict({
            "name": "ten", "out": str(tmp_path / "run"), "device": "cpu",
            "source": {"data": "digits", "limits": {"train": 30, "val": 15, "test": 15}},
            "features": {"backbones": ["toy"], "workers": 0, "cache_dir": str(tmp_path / "c")},
            "probes": {"heads": ["knn"]},
            "finetune": {"modes": modes, "batch_size": 1, "workers": 0},
        })  # fmt: skip

    said = r"finetune.modes\[1\] \('full' on toy\): finetune.batch_size 1 trains batches of 1 "
    with pytest.raises(ConfigError, match=said + "image through batch norm that trains"):
        run_pipeline(config(["bn", "full"]), progress=False, log=lambda _: None)
    assert not (tmp_path / "run").exists() and not (tmp_path / "c").exists()
