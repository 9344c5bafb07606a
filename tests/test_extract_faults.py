"""Extraction under faults: a full disk, float16 overflow, two processes on one store, damaged
files at the output path, precision and decode paths, cost over resumed runs, SIGINT/SIGTERM."""

from __future__ import annotations

import errno
import importlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from extract_child import LAYERS, NoiseSource, chunks_done, read_features, wait_for_chunks
from filelock import FileLock

from featpipe.backbones import get_backbone
from featpipe.cli import main
from featpipe.errors import (
    ImageReadError,
    NonFiniteFeaturesError,
    StoreInUseError,
    StoreMismatchError,
    StoreWriteError,
    UnreadableStoreError,
)
from featpipe.extract import extract, inference
from featpipe.extract.loop import compute_identity
from featpipe.store import FeatureStore
from featpipe.store.lock import StoreLock, lock_path, owner_path

CHILD = Path(__file__).with_name("extract_child.py")
FAST = dict(workers=0, device="cpu", progress=False, batch_size=5)
F32 = dict(dtype="float32", **FAST)


def _cli(out: Path, *extra: str, rows: int = 10, workers: int = 0) -> list[str]:
    """`featpipe extract noise ...` in a child process (see extract_child.py)."""
    return [
        sys.executable,
        str(CHILD),
        "cli",
        "extract",
        "noise",
        "--backbone",
        "toy",
        "--layers",
        *LAYERS,
        "--dtype",
        "float32",
        "--batch-size",
        str(rows),
        "--workers",
        str(workers),
        "--device",
        "cpu",
        "--no-progress",
        "--out",
        str(out),
        *extra,
    ]


def _env(**noise) -> dict:
    return {**os.environ, "NOISE": json.dumps(noise)}


def _reference(tmp_path: Path, n: int, rows: int) -> dict[str, np.ndarray]:
    store = extract(
        NoiseSource(n), "toy", LAYERS, out=tmp_path / "reference.h5", **{**F32, "batch_size": rows}
    )
    return read_features(store.path)


def _assert_same_features(path: Path, reference: dict[str, np.ndarray]) -> None:
    features = read_features(path)
    assert set(features) == set(reference)
    for layer in reference:
        assert np.array_equal(features[layer], reference[layer]), layer


# -- a full disk -------------------------------------------------------------------------------


def test_a_full_disk_at_a_random_chunk_then_a_rerun_gives_the_uninterrupted_features(
    tmp_path, monkeypatch
):
    n, rows = 60, 5
    failing = random.Random().randrange(1, n // rows)  # any chunk but the first
    print(f"the disk fills up at chunk {failing}")
    setitem = h5py.Dataset.__setitem__

    def full_disk(ds, key, value):
        if ds.name == "/features/pooled" and key == slice(failing * rows, (failing + 1) * rows):
            raise OSError(errno.ENOSPC, "No space left on device")
        return setitem(ds, key, value)

    out = tmp_path / "s.h5"
    monkeypatch.setattr(h5py.Dataset, "__setitem__", full_disk)
    with pytest.raises(StoreWriteError) as err:
        extract(NoiseSource(n), "toy", LAYERS, out=out, **F32)
    monkeypatch.undo()
    assert str(err.value) == (
        f"Cannot write {out}: no space left on device. {failing} of {n // rows} chunks are "
        "written and safe; free some space (or fix the disk), then run the same command to "
        "resume."
    )
    assert FeatureStore(out).chunk_done().tolist() == [i < failing for i in range(n // rows)]

    resumed = extract(NoiseSource(n), "toy", LAYERS, out=out, **F32)
    assert resumed.extraction["resumed"] and resumed.complete
    _assert_same_features(out, _reference(tmp_path, n, rows))


def tmpfs(disk: Path, size: str):
    """A tmpfs of ``size`` ("2m") mounted at the new folder ``disk``, unmounted after the test
    (needs root and mount: skips where the machine does not allow it)."""
    disk.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs."""
    yield from tmpfs(tmp_path / "disk", "2m")


@pytest.mark.slow
def test_a_disk_that_fills_up_mid_run_fails_in_one_line_and_resumes_bitwise(tmp_path, small_disk):
    n, rows = 600, 20
    out = small_disk / "s.h5"
    # Another program takes the rest of the disk while chunk 12 is computed.
    run = subprocess.run(
        _cli(out, rows=rows),
        env=_env(n=n, fill_disk_at=250, fill_disk=str(small_disk)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    print(run.stderr)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    (line,) = run.stderr.strip().splitlines()
    # Every chunk's bytes are written (zeros) when the store is created (checksummed chunks
    # cannot be sparse), so the full disk stops only the finish.
    assert line.startswith(f"featpipe extract: error: Not enough free space for {out}: marking")
    done = chunks_done(out)
    assert done == n // rows

    # Still full: refused up front, nothing touched.
    again = subprocess.run(
        _cli(out, rows=rows), env=_env(n=n), capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 2 and "Not enough free space" in again.stderr
    assert chunks_done(out) == done

    (small_disk / "filler").unlink()  # space returns
    rerun = subprocess.run(
        _cli(out, rows=rows), env=_env(n=n), capture_output=True, text=True, timeout=120
    )
    assert rerun.returncode == 0, rerun.stderr
    assert "(resumed)" in rerun.stdout and FeatureStore(out).complete
    _assert_same_features(out, _reference(tmp_path, n, rows))


# -- float16 overflow --------------------------------------------------------------------------


def test_float16_overflow_names_the_layer_and_suggests_float32(tmp_path):
    backbone = get_backbone("toy")
    with torch.no_grad():
        backbone.model.fc.weight.mul_(1e6)  # logits far beyond float16's 65504
    with pytest.raises(NonFiniteFeaturesError, match=r"Layer 'logits' .*dtype=\"float32\"") as err:
        extract(NoiseSource(12), backbone, ["pooled", "logits"], out=tmp_path / "a.h5", **FAST)
    print(err.value)
    assert not FeatureStore(tmp_path / "a.h5").chunk_done().any()
    store = extract(NoiseSource(12), backbone, ["pooled", "logits"], out=tmp_path / "b.h5", **F32)
    logits = store.arrays("logits")[0]
    assert np.isfinite(logits).all() and np.abs(logits).max() > 65504


# -- two processes on one store ----------------------------------------------------------------


def test_a_store_in_use_fails_after_the_lock_timeout_saying_by_whom(tmp_path):
    out = tmp_path / "s.h5"
    with StoreLock(out), pytest.raises(StoreInUseError) as err:
        extract(NoiseSource(12), "toy", ["pooled"], out=out, lock_timeout=0.2, **FAST)
    message = str(err.value)
    assert f"in use by pid {os.getpid()} on host {socket.gethostname()}" in message
    assert "overwrite" not in message and "0.2 s" in message
    assert not out.exists() and not owner_path(out).exists()


@pytest.mark.slow
def test_two_extractions_to_one_store_take_turns(tmp_path):
    out, n, rows = tmp_path / "s.h5", 200, 10
    hold = tmp_path / "hold"
    hold.touch()  # the first run pauses at its third chunk until the second one waits
    paused = _env(n=n, hold_at=2 * rows, hold=str(hold))
    second_log = tmp_path / "second.err"
    first = subprocess.Popen(_cli(out, rows=rows), env=paused, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    second = None
    try:
        assert wait_for_chunks(out, 1, first) >= 1
        with second_log.open("w") as err:
            second = subprocess.Popen(
                _cli(out, rows=rows), env=_env(n=n), stdout=subprocess.PIPE, stderr=err, text=True
            )
        deadline = time.monotonic() + 120
        while "waiting for" not in second_log.read_text():
            assert second.poll() is None and time.monotonic() < deadline, second_log.read_text()
            time.sleep(0.05)
        with pytest.raises(StoreInUseError) as impatient:
            extract(NoiseSource(n), "toy", LAYERS, out=out, lock_timeout=0.5, **F32)
        assert first.poll() is None  # it was still running
        hold.unlink()
        first_out, first_err = first.communicate(timeout=120)
        second_out, _ = second.communicate(timeout=120)
    finally:
        for process in (first, second):
            if process is not None:
                process.kill()
    whom = f"in use by pid {first.pid} on host {socket.gethostname()}"
    assert whom in str(impatient.value) and "overwrite" not in str(impatient.value)
    assert first.returncode == 0, first_err
    assert f"extracted {n} images" in first_out
    second_err = second_log.read_text()
    assert second.returncode == 0, second_err
    assert f"featpipe: waiting for {out}: {whom}" in second_err
    assert "reused cached store" in second_out
    assert FeatureStore(out).complete and len(FeatureStore(out).attrs["extraction"]["runs"]) == 1
    _assert_same_features(out, _reference(tmp_path, n, rows))
    assert not owner_path(out).exists()


# -- damaged files at the output path ----------------------------------------------------------


def _truncated_store(path: Path) -> None:
    extract(NoiseSource(40), "toy", LAYERS, out=path, **F32)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def _foreign_hdf5(path: Path) -> None:
    with h5py.File(path, "w") as f:
        f["images"] = np.zeros((3, 4))


@pytest.mark.parametrize(
    "make, reason",
    [(_truncated_store, "the file is truncated"), (_foreign_hdf5, "but not a featpipe store")],
    ids=["truncated", "foreign-hdf5"],
)
def test_a_damaged_file_at_out_is_refused_clearly_and_overwrite_replaces_it(
    tmp_path, make, reason, capsys
):
    out = tmp_path / "s.h5"
    make(out)
    with pytest.raises(UnreadableStoreError, match=reason) as err:
        extract(NoiseSource(12), "toy", ["pooled"], out=out, **FAST)
    assert "--overwrite" in str(err.value)
    assert main(["info", str(out)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == f"featpipe info: error: {err.value}"
    store = extract(NoiseSource(12), "toy", ["pooled"], out=out, overwrite=True, **FAST)
    assert store.complete


def test_a_damaged_file_being_written_by_another_process_is_in_use(tmp_path):
    out = tmp_path / "s.h5"
    _truncated_store(out)
    held = FileLock(str(lock_path(out)))  # as another process holds it
    held.acquire()
    try:
        owner_path(out).write_text(json.dumps({"pid": 4242, "host": "node7"}))
        with pytest.raises(StoreInUseError, match="in use by pid 4242 on host node7") as err:
            extract(NoiseSource(12), "toy", ["pooled"], out=out, lock_timeout=0, **FAST)
    finally:
        held.release()
    assert "overwrite" not in str(err.value)


# -- precision and decode path -----------------------------------------------------------------


@pytest.mark.parametrize(
    "device, data_path, amp, expected",
    [
        ("cpu", "cpu", None, {"precision": "fp32", "decode": "pil"}),
        ("cpu", "gpu", None, {"precision": "fp32", "decode": "pil"}),  # the same pixels
        ("cuda", "gpu", torch.bfloat16, {"precision": "bf16", "decode": "nvjpeg"}),
        ("cuda", "cpu", torch.bfloat16, {"precision": "bf16", "decode": "pil"}),
        ("cuda", "gpu", torch.float16, {"precision": "fp16", "decode": "nvjpeg"}),  # T4, V100
    ],
)
def test_compute_identity(device, data_path, amp, expected, monkeypatch):
    # The GPU's autocast dtype (device.amp_dtype), simulated: this machine may have no GPU.
    monkeypatch.setattr(inference, "amp_dtype", lambda _device: amp)
    assert compute_identity(torch.device(device), data_path) == expected


def test_stores_are_never_shared_across_precision_or_decode_path(tmp_path, monkeypatch):
    cpu = extract(NoiseSource(12), "toy", ["pooled"], cache_dir=tmp_path, **FAST)
    assert cpu.attrs["compute"] == {"precision": "fp32", "decode": "pil"}
    same_pixels = extract(
        NoiseSource(12), "toy", ["pooled"], cache_dir=tmp_path, data_path="gpu", **FAST
    )
    assert same_pixels.extraction["reused"] and same_pixels.path == cpu.path

    # What a CUDA device asks for, simulated on this CPU.
    cuda = {"precision": "bf16", "decode": "nvjpeg"}
    extractor = importlib.import_module("featpipe.extract.extractor")
    monkeypatch.setattr(extractor, "compute_identity", lambda *_: cuda)
    other = extract(NoiseSource(12), "toy", ["pooled"], cache_dir=tmp_path, **FAST)
    assert other.key != cpu.key and not other.extraction["reused"]
    assert other.attrs["compute"] == cuda
    with pytest.raises(StoreMismatchError, match=r"compute: store has .*fp32.*asked for .*bf16"):
        extract(NoiseSource(12), "toy", ["pooled"], out=cpu.path, **FAST)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_and_cpu_extractions_never_share_a_store(tmp_path):
    cpu = extract(NoiseSource(64), "toy", ["pooled"], cache_dir=tmp_path, **F32)
    cuda = extract(
        NoiseSource(64), "toy", ["pooled"], cache_dir=tmp_path, **{**F32, "device": "cuda"}
    )
    assert cuda.attrs["compute"] == {"precision": "bf16", "decode": "nvjpeg"}
    assert cuda.key != cpu.key and not cuda.extraction["reused"]
    with pytest.raises(StoreMismatchError, match="compute"):
        extract(NoiseSource(64), "toy", ["pooled"], out=cpu.path, **{**F32, "device": "cuda"})
    a, b = cpu.arrays("pooled")[0], cuda.arrays("pooled")[0]
    print("max relative difference cuda/cpu:", np.abs(a - b).max() / np.abs(a).max())


# -- cost over every run -----------------------------------------------------------------------


def test_cost_is_summed_over_every_run_that_built_the_store(tmp_path):
    out = tmp_path / "s.h5"
    with pytest.raises(ImageReadError):
        extract(NoiseSource(23, fail_at=17), "toy", LAYERS, out=out, **F32)
    resumed = extract(NoiseSource(23), "toy", LAYERS, out=out, **F32)
    assert resumed.extraction["images"] == 8  # this call: the CLI's "extracted 8 images"
    cost = resumed.attrs["extraction"]
    assert cost["images"] == 23 and [r["images"] for r in cost["runs"]] == [15, 8]
    assert cost["seconds"] == pytest.approx(sum(r["seconds"] for r in cost["runs"]), abs=1e-3)
    reused = extract(NoiseSource(23), "toy", LAYERS, out=out, **F32)
    assert reused.extraction["images"] == 0 and reused.attrs["extraction"] == cost


# -- SIGINT and SIGTERM ------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_and_sigint_drain_the_writer_and_a_rerun_resumes_bitwise(tmp_path):
    out, n, rows = tmp_path / "s.h5", 200, 10
    before = 0
    for signum, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        # its own process group, signalled as a whole: the way Ctrl-C and schedulers do it
        child = subprocess.Popen(
            _cli(out, rows=rows, workers=2),
            env=_env(n=n, delay=0.02),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            assert wait_for_chunks(out, before + 2, child) >= before + 2
            os.killpg(child.pid, signum)
            _, stderr = child.communicate(timeout=60)
        finally:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
        print(signum, stderr)
        assert child.returncode == code and "Traceback" not in stderr
        done = chunks_done(out)
        assert stderr.strip().splitlines()[-1] == (
            f"featpipe extract: interrupted: {done} of {n // rows} chunks done; "
            "run the same command to resume"
        )
        assert before < done < n // rows
        before = done
    rerun = subprocess.run(
        _cli(out, rows=rows, workers=2), env=_env(n=n), capture_output=True, text=True, timeout=120
    )
    assert rerun.returncode == 0 and "(resumed)" in rerun.stdout, rerun.stderr
    assert len(FeatureStore(out).attrs["extraction"]["runs"]) == 3
    _assert_same_features(out, _reference(tmp_path, n, rows))
