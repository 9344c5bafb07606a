"""The data-size sweep: nested, stratified, seeded train subsets; every method at each size;
rows that say their size; and plans without a sweep (or a fine-tuning grid) as before."""

from __future__ import annotations

import numpy as np
import pytest
from test_finetune_recipe import RecordingSource
from test_run_plan import PIPELINE as PROBE_PIPELINE

from featpipe.cli import main
from featpipe.data import ArraySource, nested_subsets, train_subset
from featpipe.errors import ConfigError
from featpipe.evaluate.leakage import content_hashes
from featpipe.pipeline import config_from_dict
from featpipe.pipeline.runner import plan
from featpipe.report import read_results
from featpipe.store import TrainSubset, write_arrays

PIPELINE = PROBE_PIPELINE + "[finetune]\nepochs = 1\nbatch_size = 16\n"


def test_nested_subsets_are_nested_stratified_and_seeded():
    labels = np.repeat([0, 1, 2], [300, 200, 100])
    subsets = nested_subsets(labels, [60, 300, 600], seed=3)
    assert set(subsets[60]) <= set(subsets[300]) <= set(subsets[600])
    for n, rows in subsets.items():
        counts = np.bincount(labels[rows], minlength=3)
        assert np.all(np.abs(counts - n * np.array([0.5, 1 / 3, 1 / 6])) <= 1), counts
    # The same seed draws the same rows whatever other sizes are asked for.
    assert np.array_equal(nested_subsets(labels, [300], seed=3)[300], subsets[300])
    assert not np.array_equal(nested_subsets(labels, [300], seed=4)[300], subsets[300])
    with pytest.raises(ConfigError, match="from 1 to the 600 rows"):
        nested_subsets(labels, [601])


def test_train_subset_keeps_val_and_test_whole():
    rng = np.random.default_rng(0)
    labels = np.arange(90) % 3
    splits = ["train"] * 60 + ["val"] * 15 + ["test"] * 15
    src = ArraySource(rng.integers(0, 255, (90, 8, 8, 3), dtype=np.uint8), labels, splits=splits)
    small, large = train_subset(src, 12, seed=1), train_subset(src, 30, seed=1)
    assert small.split_counts() == {"train": 12, "val": 15, "test": 15}
    assert np.bincount(small.labels[small.indices("train")]).tolist() == [4, 4, 4]
    assert {small.ids[i] for i in small.indices("train")} <= set(large.ids)
    assert [small.ids[i] for i in small.indices("test")] == [
        src.ids[i] for i in src.indices("test")
    ]
    with pytest.raises(ConfigError, match="60 train images"):
        train_subset(src, 61)


def test_a_store_seen_through_a_train_subset(tmp_path):
    X = np.arange(40, dtype=np.float32).reshape(20, 2)
    splits = ["train"] * 10 + ["val"] * 5 + ["test"] * 5
    store = write_arrays(tmp_path / "s.h5", {"pooled": X}, np.arange(20) % 2, splits, ["a", "b"])
    keep = store.ids("train")[:4]
    view = TrainSubset(store, keep)
    assert view.split_counts() == {"train": 4, "val": 5, "test": 5}
    assert view.ids("train") == keep and len(view.ids()) == 14
    assert np.array_equal(view.arrays("pooled", "train")[0], X[:4])
    assert np.array_equal(view.arrays("pooled", "test")[0], X[15:])
    assert view.classes == store.classes and view.key == store.key


def test_plans_without_a_sweep_or_a_grid_keep_their_hashes():
    import toy_backbone  # noqa: F401

    raw = {
        "source": {"data": "digits"},
        "features": {"backbones": ["toy"], "layers": ["pooled", "stage1"]},
        "probes": {"heads": ["knn", "logreg"]},
        "finetune": {"modes": ["head"], "epochs": 1},
    }
    # The hashes the same config had before sweeps, grids and the mse loss existed: the
    # rows of earlier runs are still reused.
    assert [(j.method, j.config_hash, j.train_size) for j in plan(config_from_dict(raw), "fp")] == [
        ("toy/knn@pooled", "22fb0368ff79d62c", None),
        ("toy/logreg@pooled", "98c8a4df3b80058d", None),
        ("toy/knn@stage1", "c401d89bc1d65a2e", None),
        ("toy/logreg@stage1", "6e7ce93d51ccecae", None),
        ("toy/finetune:head", "729c3b6777b9223b", None),
    ]
    raw["source"]["train_sizes"] = [50, 10]
    jobs = plan(config_from_dict(raw), "fp")
    assert [j.train_size for j in jobs] == [10] * 4 + [50] * 4 + [10, 50]
    assert len({j.config_hash for j in jobs}) == len({(j.method, j.seed) for j in jobs}) == 10
    assert jobs[0].method == "toy/knn@pooled#n=10"
    assert jobs[0].label == "kNN on layer pooled, 10 train images"


@pytest.mark.parametrize(
    ("sizes", "match"),
    [([0, 10], "different positive"), ([10, 10], "different positive")],
)
def test_bad_sizes_are_refused(sizes, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict({**_raw(), "source": {"data": "digits", "train_sizes": sizes}})


def _raw() -> dict:
    return {"source": {"data": "digits"}, "features": {"backbones": ["toy"]}}


def test_every_method_runs_at_each_size(tmp_path, capsys):
    toml = tmp_path / "p.toml"
    toml.write_text(PIPELINE.replace("CACHE", str(tmp_path / "cache")))
    out = tmp_path / "run"
    argv = ["run", str(toml), "--out", str(out), "--quiet"]
    sets = ["--set", "source.train_sizes=[30, 90]", "--set", 'finetune.modes=["head"]']
    assert main([*argv, *sets]) == 0
    rows = read_results(out / "results.jsonl")
    assert sorted((r["kind"], r["train_size"]) for r in rows) == [
        ("finetune", 30),
        ("finetune", 90),
        ("probe", 30),
        ("probe", 90),
    ]
    tests = {r["test"]["ids_sha256"] for r in rows}
    assert len(tests) == 1  # test fixed across sizes and methods
    assert all(r["params"]["refit_on"] == "train" for r in rows if r["kind"] == "probe")
    assert "kNN on layer pooled, 30 train images" in (out / "report.md").read_text()
    # A size beyond the train split fails before any compute.
    big = ["run", str(toml), "--out", str(tmp_path / "big"), "--set", "source.train_sizes=[500]"]
    assert main(big) == 2
    assert "train_sizes [500] exceed the 200 train images" in capsys.readouterr().err
    assert not (tmp_path / "big").exists()


def test_pipeline_grid_reads_test_once_for_the_winner(tmp_path, monkeypatch):
    from featpipe.data import open_source, subsample
    from featpipe.pipeline import run_pipeline

    raw = {
        "name": "grid",
        "n_boot": 0,
        "device": "cpu",
        "out": str(tmp_path / "run"),
        "source": {"data": "digits"},
        "features": {"backbones": ["toy"], "image_size": 16, "cache_dir": str(tmp_path / "c")},
        "probes": {"heads": []},
        "finetune": {
            "modes": ["head"],
            "epochs": 1,
            "batch_size": 16,
            "grid": {"lr": [1e-7, 0.1], "weight_decay": [0.0]},
        },
    }
    digits = subsample(open_source("digits", seed=0), {"train": 60, "val": 30, "test": 30})
    recording = RecordingSource(digits)
    # Without a feature store, the stage decodes every image once to find unreadable ones;
    # leave that scan out so that the recording holds the fine-tunes' loads only.
    monkeypatch.setattr("featpipe.pipeline.stages.finetune.unreadable_images", lambda *a, **k: {})
    # The report's data checks read every image once more for its perceptual hash: leave
    # that out too (they check the data, and read no prediction).
    monkeypatch.setattr("featpipe.report.source_hashes", lambda s: (content_hashes(s), None))
    run_pipeline(config_from_dict(raw), source=recording, progress=False, log=lambda m: None)
    (row,) = read_results(tmp_path / "run" / "results.jsonl")
    scores = [c["score"] for c in row["curve"]]
    assert [c["params"]["lr"] for c in row["curve"]] == [1e-7, 0.1]
    assert row["params"]["lr"] == row["curve"][int(np.argmax(scores))]["params"]["lr"]
    assert row["params"]["selection"] == "val" and row["val_accuracy"] == max(scores)
    test_rows = digits.indices("test")
    loaded_test = [i for i in recording.loaded if i in set(test_rows.tolist())]
    assert sorted(loaded_test) == sorted(test_rows.tolist())  # once each: the winner's test


def test_the_split_seed_that_draws_the_subsets_is_in_their_hashes():
    import toy_backbone  # noqa: F401

    def hashes(seed: int, sizes: list[int]) -> list[str]:
        raw = {**_raw(), "probes": {"heads": ["knn"]}}
        raw["source"] = {"data": "digits", "split_seed": seed, "train_sizes": sizes}
        return [j.config_hash for j in plan(config_from_dict(raw), "fp")]

    # A source with its own splits keeps its fingerprint whatever the seed, while the
    # subsets drawn from its train split change: their rows must not be reused.
    assert hashes(0, [20]) != hashes(1, [20])
    assert hashes(0, []) == hashes(1, [])  # without a sweep the seed draws nothing here


def test_a_probe_at_a_sweep_size_is_refit_on_its_train_images_alone(tmp_path):
    from featpipe.heads import select_and_fit

    rng = np.random.default_rng(0)
    splits = ["train"] * 40 + ["val"] * 30 + ["test"] * 10
    X = rng.normal(size=(80, 4)).astype(np.float32)
    store = write_arrays(tmp_path / "s.h5", {"pooled": X}, np.arange(80) % 2, splits, ["a", "b"])
    view = TrainSubset(store, store.ids("train")[:6])
    grid = {"n_neighbors": [1, 3]}
    whole = select_and_fit("knn", view, "pooled", grid=grid)
    alone = select_and_fit("knn", view, "pooled", grid=grid, refit_on="train")
    assert whole.estimator.classifier_.n_samples_fit_ == 36 and whole.refit_on == "train+val"
    assert alone.estimator.classifier_.n_samples_fit_ == 6 and alone.refit_on == "train"
    assert alone.curve == whole.curve  # val still chooses
    with pytest.raises(ConfigError, match="refit_on='val' is not one of train\\+val, train"):
        select_and_fit("knn", view, "pooled", grid=grid, refit_on="val")
