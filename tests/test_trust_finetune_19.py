"""Fine-tuning costs and LP-FT probes: a finished run run again reports the seconds it
reported (not plus its set-up), a resumed one adds the epochs it trains; LP-FT refuses probe
features computed another way (decode, precision) than its own, and a pipeline then computes
them; an LP-FT grid fits its probe once for candidates that differ only in training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import toy_backbone  # noqa: F401  (registers the 'toy' backbone)
from conftest import make_image_folder
from test_finetune import StopAfter

from featpipe.data import open_source
from featpipe.errors import StoreMismatchError
from featpipe.extract import extract
from featpipe.finetune import FineTuner, probe
from featpipe.finetune.search import fit_grid
from featpipe.interrupt import Interrupted
from featpipe.pipeline import config_from_dict, run_pipeline
from featpipe.report import read_results

QUIET = {"batch_size": 4, "device": "cpu", "verbose": 0, "workers": 0}


@pytest.fixture
def source(tmp_path):
    root = make_image_folder(tmp_path / "img", per_class=4, splits=("train", "val", "test"))
    return open_source(str(root))


def _saved(run_dir: Path) -> tuple[float, float]:
    last = torch.load(run_dir / "last.pt", weights_only=True)
    return last["fit_seconds"], last["fit_process_seconds"]


@pytest.mark.filterwarnings("ignore:The fine-tune chose")
def test_a_finished_run_run_again_reports_the_seconds_it_reported(source, tmp_path):
    # Before: each run again added its set-up seconds (building the model, the loaders, the
    # restore), and the first report held the last checkpoint's write, which last.pt cannot.
    params = {**QUIET, "epochs": 1, "run_dir": tmp_path / "run"}
    first = FineTuner("toy", **params).fit(source)
    reported = (first.fit_seconds_, first.fit_process_seconds_)
    assert reported == _saved(tmp_path / "run")
    for _ in range(2):
        again = FineTuner("toy", **params).fit(source)
        assert again.start_epoch_ == 1
        assert (again.fit_seconds_, again.fit_process_seconds_) == reported


@pytest.mark.filterwarnings("ignore:The fine-tune chose")
def test_a_resumed_run_adds_the_seconds_of_the_piece_that_trained(source, tmp_path):
    params = {**QUIET, "epochs": 2, "run_dir": tmp_path / "run"}
    with pytest.raises(Interrupted):
        FineTuner("toy", callbacks=[StopAfter(1)], **params).fit(source)
    before, _ = _saved(tmp_path / "run")
    resumed = FineTuner("toy", **params).fit(source)
    assert resumed.start_epoch_ == 1 and resumed.fit_seconds_ > before
    # What it reports is what last.pt holds: a run again reports the same.
    assert (resumed.fit_seconds_, resumed.fit_process_seconds_) == _saved(tmp_path / "run")


@pytest.fixture
def large_jpegs(tmp_path):
    """JPEGs several times the toy's resize (36), which decode="fast" reads at a DCT scale."""
    root = tmp_path / "big"
    make_image_folder(root, per_class=4, size=(160, 120), splits=("train", "val", "test"))
    return open_source(str(root))


def _store(source, path: Path, **options):
    opts = {"dtype": "float32", "device": "cpu", "workers": 0, "progress": False}
    return extract(source, "toy", ["pooled"], out=path, **opts, **options)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_lpft_refuses_probe_features_decoded_or_computed_otherwise(large_jpegs, tmp_path):
    # Before: a --decode fast store fitted an exact fine-tune's probe (features 2e-3 off).
    fast = _store(large_jpegs, tmp_path / "fast.h5", decode="fast")
    lpft = {**QUIET, "mode": "lpft", "epochs": 1}
    match = r"computed with decode pil-fast, precision fp32, the fine-tuning computes them with"
    with pytest.raises(StoreMismatchError, match=match):
        FineTuner("toy", **lpft).fit(large_jpegs, probe_features=fast)
    # The same decode: read, and the probe is the one the fine-tune computes itself.
    read = FineTuner("toy", decode="fast", **lpft).fit(large_jpegs, probe_features=fast)
    computed = FineTuner("toy", decode="fast", **lpft).fit(large_jpegs)
    assert read.probe_["features"] == str(fast.path)
    assert read.probe_["C"] == computed.probe_["C"]
    assert read.probe_["val_accuracy"] == computed.probe_["val_accuracy"]
    # A store extracted on CUDA (bf16 autocast) for a fine-tune on the CPU (fp32).
    exact = _store(large_jpegs, tmp_path / "exact.h5")
    exact.attrs["compute"] = {"decode": "pil", "precision": "bf16"}
    with pytest.raises(StoreMismatchError, match="precision bf16"):
        FineTuner("toy", **lpft).fit(large_jpegs, probe_features=exact)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_pipeline_lpft_computes_its_probe_when_the_store_computed_otherwise(
    tmp_path, monkeypatch
):
    # As on CUDA, where the store's pixels come from nvJPEG and the fine-tune's from Pillow.
    # Before: the probe read the store's features all the same.
    def on_cuda(device, decode, dtype):
        return {"decode": "pil", "precision": "bf16"}

    monkeypatch.setattr(probe, "own_compute", on_cuda, raising=False)
    config = config_from_dict({
        "name": "lpft", "out": str(tmp_path / "run"), "device": "cpu",
        "source": {"data": "digits", "limits": {"train": 30, "val": 15, "test": 15}},
        "features": {"backbones": ["toy"], "layers": ["pooled"], "workers": 0,
                     "cache_dir": str(tmp_path / "c")},
        "probes": {"heads": ["knn"]},
        "finetune": {"modes": ["lpft"], "workers": 0, "epochs": 1, "batch_size": 8},
    })  # fmt: skip
    run_pipeline(config, progress=False, log=lambda _: None)
    rows = read_results(tmp_path / "run" / "results.jsonl")
    [row] = [r for r in rows if r["kind"] == "finetune"]
    assert row["provenance"]["store"] is None
    assert "features" not in row["history"][0]["probe"]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_an_lpft_grid_fits_its_probe_once_for_candidates_that_differ_in_training(
    source, monkeypatch
):
    # Before: one probe per candidate (the backbone's forward pass over train and val, and
    # the logistic-regression path), though lr changes nothing the probe reads.
    fits = []
    fit_probe = probe.fit_probe
    monkeypatch.setattr(probe, "fit_probe", lambda *a, **k: fits.append(1) or fit_probe(*a, **k))
    tuner = FineTuner("toy", mode="lpft", epochs=1, **QUIET)
    search = fit_grid(tuner, source, {"lr": [0.01, 0.05]})
    assert len(fits) == 1
    # The candidate that reused the probe is what it is fitted alone.
    _, (params, score) = search.curve
    alone = FineTuner("toy", mode="lpft", epochs=1, **QUIET, **params).fit(source)
    assert float(alone.best_score_[0]) == score
    assert {**alone.probe_, "seconds": 0} == {**search.best.probe_, "seconds": 0}
    # A setting the probe reads (its C) fits one probe per value.
    fits.clear()
    fit_grid(tuner, source, {"probe_C": [0.1, 1.0]})
    assert len(fits) == 2
