"""Extraction on a CPU device in lanes (featpipe/extract/lanes.py), and the thread-safety of
the forward pass they share."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from extract_child import NoiseSource
from torch import nn

from featpipe.backbones import Backbone, Preprocessing
from featpipe.errors import ImageReadError
from featpipe.extract import extract, loop
from featpipe.extract import lanes as lanes_module
from featpipe.extract.lanes import Lanes, threads_per_lane
from featpipe.store import FeatureStore

FAST = dict(device="cpu", progress=False, batch_size=4, dtype="float32")
threads_before = torch.get_num_threads()


def test_lanes_yield_results_in_order_whatever_order_they_finish():
    def work(i: int) -> int:
        time.sleep(0.02 * (i % 3 == 0))  # every third item finishes after the next ones
        return i * i

    lanes = Lanes(work, 10, 3)
    try:
        assert list(lanes) == [i * i for i in range(10)]
    finally:
        lanes.close()


def test_lanes_compute_at_most_twice_their_count_ahead():
    started = []

    def work(i: int) -> int:
        started.append(i)
        return i

    lanes = Lanes(work, 20, 2)
    results = iter(lanes)
    try:
        assert next(results) == 0
        time.sleep(0.2)  # a consumer busy with item 0
        assert sorted(started) == [0, 1, 2, 3, 4]  # item 0 and the four after it
    finally:
        lanes.close()


def test_a_lane_error_is_raised_where_its_result_was_due_and_close_stops_the_rest():
    done = []

    def work(i: int) -> int:
        if i == 2:
            raise ValueError("item 2")
        time.sleep(0.01)
        done.append(i)
        return i

    lanes = Lanes(work, 100, 2)
    got = []
    with pytest.raises(ValueError, match="item 2"):
        for value in lanes:
            got.append(value)
    lanes.close()
    assert got == [0, 1]
    assert len(done) < 10  # items not started were dropped


class _Meeting(nn.Module):
    """Waits inside the forward pass until the other thread's pass is there too."""

    def __init__(self, barrier: threading.Barrier):
        super().__init__()
        self.barrier = barrier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.barrier.wait(timeout=10)
        return x


def test_two_threads_running_one_feature_model_each_get_their_own_features():
    """Both passes are inside the model at once (after the hooked layer): each must return
    the features of its own input, not the other's."""
    torch.manual_seed(0)
    barrier = threading.Barrier(2)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), _Meeting(barrier))
    backbone = Backbone(spec="meet", model=model, preprocessing=Preprocessing(36, 32))
    features = backbone.features(["0:avg"])
    inputs = [torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)]
    with torch.inference_mode():
        expected = [model[0](x).mean((2, 3)) for x in inputs]
    results: dict[int, dict] = {}

    def run(i: int) -> None:
        with torch.inference_mode():
            results[i] = features(inputs[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert sorted(results) == [0, 1]
    for i in range(2):
        torch.testing.assert_close(results[i]["0:avg"], expected[i])


def test_cpu_extraction_in_lanes_gives_the_main_threads_features(tmp_path):
    serial = extract(NoiseSource(22), "toy", ["pooled"], out=tmp_path / "a.h5", workers=0, **FAST)
    lanes = extract(NoiseSource(22), "toy", ["pooled"], out=tmp_path / "b.h5", workers=2, **FAST)
    assert serial.extraction["lanes"] == 0 and lanes.extraction["lanes"] == 2
    np.testing.assert_allclose(
        lanes.arrays("pooled")[0], serial.arrays("pooled")[0], rtol=1e-5, atol=1e-6
    )
    assert FeatureStore(tmp_path / "b.h5").attrs["extraction"]["lanes"] == 2
    assert torch.get_num_threads() == threads_before  # restored after the run


def test_lanes_share_the_cores(monkeypatch):
    monkeypatch.setattr(lanes_module, "available_cores", lambda: 8)
    assert [threads_per_lane(n) for n in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]


def test_lanes_run_with_their_share_of_threads(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(lanes_module, "available_cores", lambda: 4)
    real = loop.PieceDataset.__getitem__

    def spy(self, i):
        seen.append(torch.get_num_threads())
        return real(self, i)

    monkeypatch.setattr(loop.PieceDataset, "__getitem__", spy)
    extract(NoiseSource(12), "toy", ["pooled"], out=tmp_path / "s.h5", workers=2, **FAST)
    assert seen and set(seen) == {2}


@pytest.mark.parametrize("lanes", [True, False], ids=["lanes", "loader-workers"])
def test_an_unreadable_image_stops_the_run_after_writing_the_chunks_before_it(
    tmp_path, monkeypatch, lanes
):
    if not lanes:  # the DataLoader's worker processes, which CUDA devices use
        monkeypatch.setattr(loop, "lane_count", lambda *_: 0)
    with pytest.raises(ImageReadError, match=r"noise/img0009\.jpg"):
        extract(
            NoiseSource(16, fail_at=9), "toy", ["pooled"], out=tmp_path / "s.h5", workers=2, **FAST
        )
    assert FeatureStore(tmp_path / "s.h5").chunk_done().tolist() == [True, True, False, False]
