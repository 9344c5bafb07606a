"""Extraction into stores: layers in one pass, cache reuse and keys, mismatch, resume, errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from extract_child import LAYERS, NoiseSource, read_features, wait_for_chunks

from featpipe.backbones import Backbone, get_backbone
from featpipe.backbones.base import state_dict_sha256
from featpipe.errors import (
    ConfigError,
    ImageReadError,
    IncompleteStoreError,
    StoreMismatchError,
    UnknownNameError,
)
from featpipe.extract import CPUDataPath, extract, get_data_path, plan_extraction
from featpipe.extract.host_copy import start_copy
from featpipe.extract.writer_thread import BackgroundWriter
from featpipe.store import FeatureStore
from featpipe.store.consolidate import consolidate
from featpipe.store.parts import parts_dir

CHILD = Path(__file__).with_name("extract_child.py")
FAST = dict(workers=0, device="cpu", progress=False, batch_size=5)


def test_several_layers_with_different_poolings_in_one_pass(tmp_path):
    backbone = get_backbone("toy")
    calls = []
    backbone.model.register_forward_hook(lambda *_: calls.append(1))
    source = NoiseSource(12)
    store = extract(source, backbone, LAYERS, cache_dir=tmp_path, **FAST)
    assert store.complete and store.layers == LAYERS
    dims = {name: store.layer_info(name)["dim"] for name in LAYERS}
    assert dims == {
        "stem:max": 8,
        "stage1:grid:2": 64,
        "stage2:avgmax": 64,
        "pooled": 32,
        "logits": 10,
    }
    poolings = {name: store.layer_info(name)["pooling"] for name in LAYERS}
    assert poolings == {
        "stem:max": "max",
        "stage1:grid:2": "grid:2",
        "stage2:avgmax": "avgmax",
        "pooled": "none",
        "logits": "none",
    }
    # one forward per chunk (3 chunks of 5, 5, 2 rows) plus the dummy pass that sizes the store
    assert len(calls) == 3 + 1
    assert store.extraction["computed_chunks"] == 3 and store.extraction["images"] == 12
    # the stored logits are the model's own, and the hooks are gone afterwards
    x = torch.stack([backbone.preprocessing.transform()(source.load(i)) for i in range(12)])
    with torch.inference_mode():
        logits = backbone.model(x).numpy()
    np.testing.assert_allclose(store.arrays("logits")[0], logits, rtol=1e-2, atol=1e-2)
    assert not backbone.model.stage2._forward_hooks
    X, y = store.arrays("pooled", split="train")
    assert X.shape == (int((source.splits == 0).sum()), 32) and np.isfinite(X).all()
    np.testing.assert_array_equal(y, source.labels[source.splits == 0])
    assert store.ids() == source.ids


def test_same_inputs_reuse_the_store_without_computing(tmp_path):
    backbone = get_backbone("toy")
    first = extract(NoiseSource(12), backbone, ["pooled"], cache_dir=tmp_path, **FAST)
    mtime = first.path.stat().st_mtime_ns
    calls = []
    backbone.model.register_forward_hook(lambda *_: calls.append(1))
    again = extract(NoiseSource(12), backbone, ["pooled"], cache_dir=tmp_path, **FAST)
    assert again.path == first.path and again.extraction["reused"]
    assert again.extraction["computed_chunks"] == 0 and calls == []
    assert first.path.stat().st_mtime_ns == mtime
    assert first.path.name.startswith("noise-toy-") and first.path.name.endswith(".h5")


def test_a_backbone_whose_weights_changed_gets_a_new_store(tmp_path):
    source, backbone = NoiseSource(8), get_backbone("toy")
    by_name = extract(source, "toy", ["pooled"], cache_dir=tmp_path, **FAST)
    same = extract(source, backbone, ["pooled"], cache_dir=tmp_path, **FAST)
    assert same.extraction["reused"] and same.key == by_name.key  # unchanged: one store
    with torch.no_grad():
        for p in backbone.model.parameters():
            p.mul_(2.0)  # fine-tuned, or load_state_dict of other weights
    changed = extract(source, backbone, ["pooled"], cache_dir=tmp_path, **FAST)
    assert changed.key != by_name.key and not changed.extraction["reused"]
    fresh = extract(source, backbone, ["pooled"], out=tmp_path / "fresh.h5", **FAST)
    np.testing.assert_array_equal(changed.arrays("pooled")[0], fresh.arrays("pooled")[0])
    assert fresh.key == changed.key


def test_a_weights_file_hash_stands_until_the_weights_change(tmp_path):
    toy = get_backbone("toy")
    named = Backbone("toy@file", toy.model, toy.preprocessing, weights_sha256="f" * 64)
    plan = plan_extraction(NoiseSource(4), named, cache_dir=tmp_path, **FAST)
    assert plan.backbone.weights_sha256 == "f" * 64  # the file's hash, as a spec string gives
    with torch.no_grad():
        toy.model.fc.bias.add_(1.0)
    plan = plan_extraction(NoiseSource(4), named, cache_dir=tmp_path, **FAST)
    assert plan.backbone.weights_sha256 == state_dict_sha256(toy.model) != "f" * 64


@pytest.mark.parametrize(
    "change",
    [
        {"backbone": "toy@1"},  # other weights
        {"layers": ["stage2:avg"]},  # other layer
        {"layers": ["stage2:max"]},  # other pooling of the same layer
        {"image_size": 24},  # other preprocessing
        {"source": NoiseSource(12, seed=1)},  # other image set
        {"dtype": "float32"},
    ],
    ids=["weights", "layer", "pooling", "image_size", "image_set", "dtype"],
)
def test_any_changed_input_makes_a_new_store(tmp_path, change):
    base = {"source": NoiseSource(12), "backbone": "toy", "layers": ["stage2:avg"]}
    if change.get("layers") == ["stage2:avg"]:
        base["layers"] = ["pooled"]
    first = extract(**base, cache_dir=tmp_path, **FAST)
    other = extract(**{**base, **change}, cache_dir=tmp_path, **FAST)
    assert other.path != first.path and other.key != first.key
    assert not other.extraction["reused"] and other.extraction["computed_chunks"] == 3
    assert len(list(tmp_path.glob("*.h5"))) == 2


def test_mismatched_out_store_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "mine.h5"
    extract(NoiseSource(12), "toy", ["pooled"], out=out, **FAST)
    with pytest.raises(StoreMismatchError) as err:
        extract(NoiseSource(12), "toy@1", ["pooled", "stem:avg"], out=out, **FAST)
    msg = str(err.value)
    assert "weights_sha256" in msg and "spec" in msg and "layers" in msg
    assert "overwrite" in msg and "source_fingerprint" not in msg
    replaced = extract(NoiseSource(12), "toy@1", ["pooled"], out=out, overwrite=True, **FAST)
    assert replaced.attrs["backbone"]["spec"] == "toy@1" and replaced.complete


@pytest.mark.parametrize("where", ["out_folder", "out_under_a_file", "cache_dir_a_file"])
def test_an_output_path_that_cannot_be_a_file_is_refused_before_anything(tmp_path, where):
    (tmp_path / "afile").write_text("a file")
    target = {
        "out_folder": {"out": tmp_path},
        "out_under_a_file": {"out": tmp_path / "afile" / "s.h5"},
        "cache_dir_a_file": {"cache_dir": tmp_path / "afile"},
    }[where]
    match = "is a folder" if where == "out_folder" else "afile is a file, not a folder"
    with pytest.raises(ConfigError, match=match):
        extract(NoiseSource(6), "toy", ["pooled"], **target, **FAST)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_a_one_file_store_replacing_a_parted_one_leaves_no_parts_behind(tmp_path):
    source, out, other = NoiseSource(16), tmp_path / "s.h5", tmp_path / "other.h5"
    options = dict(out=out, chunk_rows=2, **FAST)
    extract(source, "toy", ["pooled"], shard=(0, 1), **options)
    assert parts_dir(out).is_dir()
    one = extract(source, "toy", ["pooled"], overwrite=True, **options)
    assert one.info()["layout"] == "file" and not parts_dir(out).exists()
    # the same for a consolidated store written over a parted one
    extract(source, "toy", ["pooled"], shard=(0, 1), **{**options, "out": other})
    extract(source, "toy", ["pooled"], shard=(0, 1), overwrite=True, **options)
    consolidate(other, out, force=True)
    assert FeatureStore(out).info()["layout"] == "file" and not parts_dir(out).exists()
    assert parts_dir(other).is_dir()  # the source keeps its parts


def test_a_file_that_is_not_a_store_is_refused(tmp_path):
    out = tmp_path / "notes.h5"
    out.write_text("not hdf5")
    with pytest.raises(StoreMismatchError, match="overwrite"):
        extract(NoiseSource(6), "toy", ["pooled"], out=out, **FAST)


def test_unreadable_image_names_its_path_and_keeps_finished_chunks(tmp_path):
    out = tmp_path / "s.h5"
    with pytest.raises(ImageReadError, match=r"noise/img0011\.jpg"):
        extract(NoiseSource(14, fail_at=11), "toy", LAYERS, out=out, **FAST)
    store = FeatureStore(out)
    assert not store.complete and store.chunk_done().tolist() == [True, True, False]
    with pytest.raises(IncompleteStoreError, match="1 of 3 chunks"):
        store.arrays("pooled")
    partial = store.arrays("stage1:grid:2", allow_incomplete=True)[0]
    # the same images through a clean run give bitwise the same finished rows
    clean = extract(NoiseSource(14), "toy", LAYERS, out=tmp_path / "clean.h5", **FAST)
    np.testing.assert_array_equal(partial, clean.arrays("stage1:grid:2")[0][:10])


def test_unreadable_image_in_a_worker_process_raises_the_same_error(tmp_path):
    with pytest.raises(ImageReadError, match=r"noise/img0007\.jpg"):
        extract(
            NoiseSource(10, fail_at=7),
            "toy",
            ["pooled"],
            out=tmp_path / "s.h5",
            **{**FAST, "workers": 2},
        )
    assert FeatureStore(tmp_path / "s.h5").chunk_done().tolist() == [True, False]


def test_resume_writes_only_missing_chunks_and_matches_a_full_run(tmp_path):
    out = tmp_path / "s.h5"
    with pytest.raises(ImageReadError):
        extract(NoiseSource(23, fail_at=17), "toy", LAYERS, out=out, dtype="float32", **FAST)
    # batch_size differs on resume: the chunk size recorded in the store is used
    resumed = extract(
        NoiseSource(23), "toy", LAYERS, out=out, dtype="float32", **{**FAST, "batch_size": 7}
    )
    assert resumed.extraction["resumed"] and resumed.extraction["computed_chunks"] == 2
    assert resumed.extraction["images"] == 8 and resumed.rows_per_chunk == 5
    full = extract(
        NoiseSource(23), "toy", LAYERS, out=tmp_path / "full.h5", dtype="float32", **FAST
    )
    a, b = read_features(out), read_features(full.path)
    assert all(np.array_equal(a[k], b[k]) for k in LAYERS)


@pytest.mark.slow
def test_kill_and_resume_matches_an_uninterrupted_run_bitwise(tmp_path):
    out, n, rows = tmp_path / "killed.h5", 300, 10
    cmd = [sys.executable, str(CHILD), str(out), str(n), str(rows)]
    child = subprocess.Popen([*cmd, "0.01"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        done = wait_for_chunks(out, 4, child)
        assert child.poll() is None, "the child finished before it could be killed"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.communicate()
    assert 4 <= done < n // rows
    killed = FeatureStore(out)
    killed_done = int(killed.chunk_done().sum())
    assert not killed.complete and 4 <= killed_done < n // rows
    with pytest.raises(IncompleteStoreError):
        killed.arrays("pooled")

    rerun = subprocess.run([*cmd, "0"], capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    stats = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert stats["resumed"] and 0 < stats["computed_chunks"] <= n // rows - 4

    reference = extract(
        NoiseSource(n),
        "toy",
        LAYERS,
        out=tmp_path / "reference.h5",
        dtype="float32",
        **{**FAST, "batch_size": rows},
    )
    a, b = read_features(out), read_features(reference.path)
    assert set(a) == set(LAYERS)
    assert all(np.array_equal(a[k], b[k]) for k in LAYERS)
    assert FeatureStore(out).complete
    # the store's cost is both runs: the killed one up to its last chunk, and the rerun
    extraction = FeatureStore(out).attrs["extraction"]
    killed_run, rerun_run = extraction["runs"]
    assert killed_run["chunks"] == killed_done and extraction["images"] == n
    assert rerun_run["chunks"] == stats["computed_chunks"]
    assert extraction["seconds"] == pytest.approx(killed_run["seconds"] + rerun_run["seconds"])


def test_unknown_layer_fails_before_any_file_is_written(tmp_path):
    with pytest.raises(UnknownNameError, match="stage1"):
        extract(NoiseSource(6), "toy", ["stage9:avg"], cache_dir=tmp_path, **FAST)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "options, match",
    [
        ({"dtype": "float64"}, "float16, float32"),
        ({"batch_size": 0}, "batch_size"),
        ({"workers": -1}, "workers"),
        ({"device": "tpu"}, "auto, cpu, cuda"),
        ({"data_path": "fast"}, "cpu"),
    ],
)
def test_bad_options_are_rejected(tmp_path, options, match):
    with pytest.raises((ConfigError, UnknownNameError), match=match):
        extract(NoiseSource(6), "toy", ["pooled"], cache_dir=tmp_path, **{**FAST, **options})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_cuda_without_a_gpu_says_so(tmp_path):
    with pytest.raises(ConfigError, match="no CUDA device"):
        extract(NoiseSource(6), "toy", ["pooled"], cache_dir=tmp_path, **{**FAST, "device": "cuda"})


def test_data_paths():
    pre = get_backbone("toy").preprocessing
    cpu = torch.device("cpu")
    assert isinstance(get_data_path("auto", pre, cpu), CPUDataPath)
    path = get_data_path("cpu", pre, cpu)
    batch = path.collate([path.load(NoiseSource(3), i) for i in range(3)])
    assert path.to_batch(batch, cpu).shape == (3, 3, 32, 32)
    assert get_data_path("gpu", pre, cpu).name == "gpu"  # the GPU code path, on CPU tensors
    with pytest.raises(UnknownNameError, match="Did you mean: 'gpu'"):
        get_data_path("gpus", pre, cpu)


def test_background_writer_hands_errors_to_the_caller():
    def write(index, features):
        if index == 2:
            raise OSError("disk full")
        return 1

    with pytest.raises(OSError, match="disk full"), BackgroundWriter(write, max_pending=1) as bg:
        for i in range(50):
            bg.submit(i, {})
    assert bg.chunks_written == 2


def test_background_writer_finishes_queued_chunks_when_the_caller_fails():
    written = []
    release = threading.Event()

    def write(index, features):
        release.wait(5)
        written.append(index)
        return 0

    with pytest.raises(KeyboardInterrupt), BackgroundWriter(write, max_pending=4) as bg:
        for i in range(3):
            bg.submit(i, {})
        release.set()
        raise KeyboardInterrupt
    assert written == [0, 1, 2]


def test_cpu_extraction_runs_channels_last_and_keeps_the_models_features(tmp_path):
    backbone = get_backbone("toy")
    source = NoiseSource(12)
    x = torch.stack([backbone.preprocessing.transform()(source.load(i)) for i in range(12)])
    with torch.inference_mode():
        expected = backbone.model(x).numpy()  # the model as loaded: contiguous layout
    layouts = []
    backbone.model.stem.register_forward_pre_hook(
        lambda _module, args: layouts.append(
            args[0].is_contiguous(memory_format=torch.channels_last)
        )
    )
    store = extract(source, backbone, ["logits"], out=tmp_path / "s.h5", dtype="float32", **FAST)
    assert layouts[-3:] == [True] * 3  # every chunk's batch
    assert backbone.model.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    # a different summation order, not different features
    np.testing.assert_allclose(store.arrays("logits")[0], expected, rtol=1e-5, atol=1e-6)


def test_host_copy_on_cpu_converts_to_the_store_dtype():
    features = {"pooled": torch.linspace(-1, 1, 12).reshape(3, 4)}
    copy = start_copy(features, torch.float16)
    assert copy.done is None
    arrays = copy.arrays()
    assert arrays["pooled"].dtype == np.float16
    np.testing.assert_array_equal(arrays["pooled"], features["pooled"].numpy().astype(np.float16))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_host_copy_from_cuda_is_pinned_and_waits_for_the_device():
    x = torch.randn(256, 2048, device="cuda")
    features = {"pooled": (x @ x.T)[:, :1000], "logits": x[:, :10]}
    copy = start_copy(features, torch.float16)
    assert copy.done is not None and copy.tensors["pooled"].is_pinned()
    arrays = copy.arrays()  # waits on the event, not on the whole device
    for name, t in features.items():
        np.testing.assert_array_equal(arrays[name], t.half().cpu().numpy())


@pytest.mark.slow
def test_torch_compile_gives_the_eager_features(tmp_path):
    if not any(shutil.which(cxx) for cxx in ("g++", "c++", "clang++")):
        pytest.skip("torch.compile on CPU needs a C++ compiler")
    eager = extract(NoiseSource(12), "toy", LAYERS, out=tmp_path / "eager.h5", **FAST)
    torch._dynamo.reset()
    compiled = extract(
        NoiseSource(12), "toy", LAYERS, out=tmp_path / "compiled.h5", torch_compile=True, **FAST
    )
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # it did compile
    assert compiled.key == eager.key  # compiling changes no input of the features
    for layer in LAYERS:
        np.testing.assert_allclose(
            compiled.arrays(layer)[0], eager.arrays(layer)[0], rtol=1e-3, atol=1e-3
        )
