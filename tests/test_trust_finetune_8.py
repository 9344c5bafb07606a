"""A pipeline's fine-tune belongs to the images the run leaves out: a run whose feature stores
skip other images (another feature backbone) neither reuses its row nor resumes its checkpoint;
a run that leaves nothing out keeps the identity, rows and run folder it had."""

from __future__ import annotations

import pytest
import torch
from conftest import WHITE, make_image_folder, make_white_folder, register_white_nan
from torch.utils.data import DistributedSampler

from featpipe.backbones import get_backbone
from featpipe.finetune.data import loader
from featpipe.pipeline import config_from_dict, run_pipeline
from featpipe.pipeline.stages import finetune as finetune_stage
from featpipe.report import read_results
from featpipe.report.runplan import read_plan

N_TEST = 12  # 3 classes x 4


register_white_nan("toy_white_nan")


@pytest.fixture
def folder(tmp_path):
    return make_white_folder(tmp_path / "images")


def _config(folder, tmp_path, feature_backbone: str):
    """Probes on ``feature_backbone`` (its store decides which images the run leaves out) and
    a fine-tune of ``toy``, under on_error = "skip"."""
    return config_from_dict({
        "name": "left-out", "seeds": [0], "n_boot": 40, "device": "cpu",
        "out": str(tmp_path / "run"), "source": {"data": str(folder)},
        "features": {"backbones": [feature_backbone], "batch_size": 8,
                     "cache_dir": str(tmp_path / "c"), "on_error": "skip"},
        "probes": {"heads": ["logreg"], "grids": {"logreg": {"C": [1.0]}}},
        "finetune": {"backbones": ["toy"], "modes": ["head"], "epochs": 1, "batch_size": 8},
    })  # fmt: skip


def _tuned(folder, tmp_path, feature_backbone: str) -> dict:
    """Run the pipeline; the fine-tune row its report shows."""
    out = run_pipeline(_config(folder, tmp_path, feature_backbone), progress=False, log=print)
    current, missing, _ = read_plan(out).select(read_results(out / "results.jsonl"))
    assert not missing
    (row,) = [r for r in current if r["kind"] == "finetune"]
    assert f"{100 * row['metrics']['top1']:.1f}" in (out / "report.md").read_text()
    return row


def test_a_fine_tune_is_not_reused_by_a_run_that_leaves_out_other_images(folder, tmp_path):
    """It was: the fine-tune's config hash leaves the skipped images out, so the run on toy's
    store (nothing skipped) reused the fine-tune trained and tested without the 2 white images,
    and the report could pair it with no probe."""
    skipping = _tuned(folder, tmp_path, "toy_white_nan")
    assert len(skipping["test"]["y_true"]) == N_TEST - 1
    assert skipping["provenance"]["skipped"]["count"] == 2

    whole = _tuned(folder, tmp_path, "toy")
    assert len(whole["test"]["y_true"]) == N_TEST
    assert whole["provenance"]["skipped"]["count"] == 0
    assert whole["config_hash"] == skipping["config_hash"]

    # Back to the skipping store: the first row is this run's again, reused as it is.
    again = _tuned(folder, tmp_path, "toy_white_nan")
    assert again == skipping
    assert len(read_results(tmp_path / "run" / "results.jsonl")) == 4  # 2 probes, 2 fine-tunes


def test_a_fine_tune_checkpoint_is_not_resumed_over_other_images(folder, tmp_path, capsys):
    """Killed after training, before its row was written (e.g. while testing): the next run,
    leaving out other images, resumed the same checkpoint folder and stopped with 'Checkpoint
    ... was written with another configuration (source: ...)', which a pipeline cannot
    answer (it has no --no-resume); it now trains in a folder of its own."""
    _tuned(folder, tmp_path, "toy_white_nan")
    results = tmp_path / "run" / "results.jsonl"
    kept = [line for line in results.read_text().splitlines() if "finetune" not in line]
    results.write_text("\n".join(kept) + "\n")

    whole = _tuned(folder, tmp_path, "toy")
    assert len(whole["test"]["y_true"]) == N_TEST
    assert len(list((tmp_path / "run" / "finetune").iterdir())) == 2


def test_a_run_that_leaves_nothing_out_keeps_its_identity(folder, tmp_path):
    """Rows and checkpoint folders of runs that skip nothing stay valid: the identity is the
    backbone's alone, under on_error = "skip" too."""
    (folder / WHITE[0]).unlink()
    (folder / WHITE[1]).unlink()
    row = _tuned(folder, tmp_path, "toy")
    assert row["provenance"]["backbone"] == get_backbone("toy").identity()
    (run_dir,) = (tmp_path / "run" / "finetune").iterdir()
    assert _tuned(folder, tmp_path, "toy") == row
    assert list((tmp_path / "run" / "finetune").iterdir()) == [run_dir]


def test_bn_mode_on_a_backbone_without_batch_norm_is_labelled_as_full(tmp_path):
    """Its rows and report said "fine-tuning (bn)" beside "fine-tuning (full)", two recipes
    where the run trained one twice (only the history's mode_note said so)."""
    folder = make_image_folder(tmp_path / "images", per_class=3, splits=("train", "val", "test"))
    config = config_from_dict({
        "name": "bn", "seeds": [0], "n_boot": 40, "device": "cpu", "out": str(tmp_path / "run"),
        "source": {"data": str(folder)},
        "features": {"backbones": ["toy"], "cache_dir": str(tmp_path / "c")},
        "probes": {"heads": []},
        "finetune": {"backbones": ["toy_nobn", "toy"], "modes": ["bn"], "epochs": 1,
                     "batch_size": 8},
    })  # fmt: skip
    with pytest.warns(UserWarning, match="toy_nobn in mode 'bn'"):
        out = run_pipeline(config, progress=False, log=lambda _: None)
    labels = {r["backbone"]: r["label"] for r in read_results(out / "results.jsonl")}
    assert labels == {
        "toy_nobn": "fine-tuning (bn without batch norm: as full) [toy_nobn]",
        "toy": "fine-tuning (bn) [toy]",
    }
    assert (
        "| fine-tuning (bn without batch norm: as full) [toy_nobn] |"
        in (out / "report.md").read_text()
    )


class _Rows(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


@pytest.mark.parametrize("n", [5, 9, 31, 50])
@pytest.mark.parametrize("batch_size", [4, 12])
@pytest.mark.parametrize("world", [2, 4])
def test_steps_per_epoch_do_not_depend_on_the_world_size(n, batch_size, world):
    """The schedule is counted in steps, and last.pt carries its step count: a run resumed
    on another number of ranks continues the same warm-up and cosine only while an epoch has
    as many steps on every world size (each rank's share of the global batch, from its
    DistributedSampler share of the rows, as FineTuner._train_loader builds them)."""
    one = loader(_Rows(n), batch_size, 0, shuffle=True)
    for rank in range(world):
        sampler = DistributedSampler(_Rows(n), num_replicas=world, rank=rank, drop_last=True)
        ranked = loader(_Rows(n), batch_size // world, 0, shuffle=True, sampler=sampler)
        assert len(ranked) == len(one)


def test_a_finished_run_without_stores_is_not_decoded_again(tmp_path, monkeypatch):
    """Without a probe, only unreadable images are left out, which the data fingerprint in
    the config hash decides: a re-run of the finished fine-tune reuses it without decoding
    every image again to find them (and without naming them in its identity)."""
    folder = make_image_folder(tmp_path / "images", per_class=4, splits=("train", "val", "test"))
    broken = folder / "train/dog/002.jpg"
    broken.write_bytes(broken.read_bytes()[:300])  # truncated
    config = config_from_dict({
        "name": "no-store", "seeds": [0], "n_boot": 40, "device": "cpu",
        "out": str(tmp_path / "run"), "source": {"data": str(folder)},
        "features": {"backbones": ["toy"], "cache_dir": str(tmp_path / "c"), "on_error": "skip"},
        "probes": {"heads": []},
        "finetune": {"backbones": ["toy"], "modes": ["head"], "epochs": 1, "batch_size": 8},
    })  # fmt: skip
    run_pipeline(config, progress=False, log=lambda _: None)
    (row,) = read_results(tmp_path / "run" / "results.jsonl")
    assert row["provenance"]["skipped"]["count"] == 1
    assert row["provenance"]["backbone"] == get_backbone("toy").identity()

    decoded = []
    monkeypatch.setattr(finetune_stage, "unreadable_images", lambda *a, **k: decoded.append(a))
    logs = []
    run_pipeline(config, progress=False, log=logs.append)
    assert not decoded
    assert "reusing finished fine-tuning (head) (seed 0)" in logs
    assert len(read_results(tmp_path / "run" / "results.jsonl")) == 1
