"""plan_extraction / run_extraction: chunks computed in parts, chunk size apart from batch
size, and the one forward pass (Inference) that extraction shares with the other users."""

from __future__ import annotations

import dataclasses

import h5py
import numpy as np
import pytest
import torch
from extract_child import NoiseSource

from featpipe.backbones import get_backbone
from featpipe.errors import ConfigError
from featpipe.extract import (
    ExtractionPlan,
    Inference,
    extract,
    inference,
    plan_extraction,
    run_extraction,
)
from featpipe.extract.loop import cut_pieces

FAST = dict(workers=0, device="cpu", progress=False, dtype="float32")


def stored(path) -> dict[str, np.ndarray]:
    """Every dataset of a store's features and progress flags, as written."""
    with h5py.File(path, "r") as f:
        return {
            "pooled": f["features/pooled"][:],
            "stage1": f["features/stage1"][:],
            "chunk_done": f["progress/chunk_done"][:],
        }


def test_plan_is_checked_and_frozen(tmp_path):
    plan = plan_extraction(NoiseSource(12), "toy", ["pooled"], cache_dir=tmp_path, **FAST)
    assert isinstance(plan, ExtractionPlan)
    assert plan.rows_per_chunk == plan.batch_size == 64  # chunk size defaults to batch size
    assert not plan.path.exists()  # planning touches no file
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.batch_size = 3
    with pytest.raises(ConfigError, match="chunk_rows must be a positive integer; got 0"):
        plan_extraction(NoiseSource(12), "toy", chunk_rows=0, cache_dir=tmp_path, **FAST)


def test_chunks_run_in_parts_give_the_same_store_as_one_run(tmp_path):
    layers = ["pooled", "stage1"]
    whole = extract(NoiseSource(23), "toy", layers, out=tmp_path / "whole.h5", batch_size=5, **FAST)
    plan = plan_extraction(
        NoiseSource(23), "toy", layers, out=tmp_path / "parts.h5", batch_size=5, **FAST
    )
    first = run_extraction(plan, chunks=[1])
    assert not first.complete and first.extraction["computed_chunks"] == 1
    assert stored(first.path)["chunk_done"].tolist() == [False, True, False, False, False]
    rest = run_extraction(plan)
    assert rest.complete and rest.extraction["computed_chunks"] == 4
    assert rest.extraction["resumed"]
    a, b = stored(whole.path), stored(rest.path)
    assert all(np.array_equal(a[k], b[k]) for k in a)  # bit for bit
    assert rest.key == whole.key
    again = run_extraction(plan, chunks=[0])  # complete: reused, nothing computed
    assert again.extraction["reused"] and again.extraction["images"] == 0


def test_chunks_out_of_range_are_refused(tmp_path):
    plan = plan_extraction(NoiseSource(12), "toy", out=tmp_path / "s.h5", batch_size=5, **FAST)
    with pytest.raises(ConfigError, match=r"Chunk indices must be integers in \[0, 3\).*\[3\]"):
        run_extraction(plan, chunks=[0, 3])


@pytest.mark.parametrize("done", [True, False], ids=["overwrite", "new"])
def test_bad_chunk_indices_touch_no_file(tmp_path, done):
    out = tmp_path / "s.h5"
    if done:
        extract(NoiseSource(12), "toy", out=out, batch_size=5, **FAST)
    before = out.read_bytes() if done else None
    plan = plan_extraction(NoiseSource(12), "toy", out=out, overwrite=done, batch_size=5, **FAST)
    with pytest.raises(ConfigError, match=r"in \[0, 3\).*got \[7\]"):
        run_extraction(plan, chunks=[0, 7])
    if done:  # the complete store is left as it was, not replaced by an empty one
        assert out.read_bytes() == before
    else:
        assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("chunk_rows, batch_size", [(7, 3), (4, 10)])
def test_chunk_size_apart_from_batch_size(tmp_path, chunk_rows, batch_size):
    ref = extract(NoiseSource(20), "toy", out=tmp_path / "ref.h5", batch_size=5, **FAST)
    store = extract(
        NoiseSource(20),
        "toy",
        out=tmp_path / "s.h5",
        batch_size=batch_size,
        chunk_rows=chunk_rows,
        **FAST,
    )
    assert store.rows_per_chunk == chunk_rows and store.complete
    assert store.key == ref.key  # chunking changes no feature, so not the key either
    np.testing.assert_allclose(store.arrays("pooled")[0], ref.arrays("pooled")[0], atol=1e-6)


def test_pieces_never_span_two_chunks():
    pieces = cut_pieces([(0, 0, 7), (2, 14, 20)], batch_size=3)
    assert [(p.chunk, p.start, p.stop, p.offset, p.last) for p in pieces] == [
        (0, 0, 3, 0, False),
        (0, 3, 6, 3, False),
        (0, 6, 7, 6, True),
        (2, 14, 17, 0, False),
        (2, 17, 20, 3, True),
    ]


def test_cli_chunk_rows(image_folder, tmp_path, capsys):
    from featpipe.cli import main

    out = tmp_path / "s.h5"
    argv = ["extract", str(image_folder), "--backbone", "toy", "--out", str(out)]
    argv += ["--batch-size", "4", "--chunk-rows", "5", "--device", "cpu", "--workers", "0"]
    assert main([*argv, "--no-progress"]) == 0
    main(["info", str(out)])
    assert "4/4 chunks of 5 rows" in capsys.readouterr().out  # 18 images


# -- the forward pass ---------------------------------------------------------------------------


def test_inference_is_eval_mode_channels_last_and_detached_after():
    bb = get_backbone("toy")
    bb.model.train()
    with Inference.of_layers(bb, ["pooled"], "cpu") as run:
        assert not bb.model.training
        assert bb.model.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
        out = run.arrays(torch.zeros(2, 3, 32, 32))
    assert out["pooled"].shape == (2, 32) and out["pooled"].dtype == np.float32
    assert not bb.model.stem[0]._forward_hooks and not bb.model.fc._forward_pre_hooks


def test_inference_runs_under_the_devices_autocast_dtype(monkeypatch):
    # A GPU's autocast dtype, simulated on the CPU (which autocasts to bf16 too).
    monkeypatch.setattr(inference, "amp_dtype", lambda _device: torch.bfloat16)
    images = torch.ones(2, 3, 8, 8)
    assert Inference(torch.nn.Conv2d(3, 4, 3), "cpu")(images).dtype == torch.bfloat16
    monkeypatch.setattr(inference, "amp_dtype", lambda _device: None)
    assert Inference(torch.nn.Conv2d(3, 4, 3), "cpu")(images).dtype == torch.float32
    assert inference.precision(torch.device("cpu")) == "fp32"
