"""Trust sweep of the feature store, round 5: a parted store replaced under its fillers, what
`cache list` shows as a store's source, consolidate into a folder that takes no file, and
JSON attributes that are not objects."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from extract_child import NoiseSource, chunks_done

from featpipe.cli import main
from featpipe.extract import extract
from featpipe.store import FeatureStore
from featpipe.store.writer import write_arrays

CHILD = Path(__file__).with_name("extract_child.py")
NOISE = ["extract", "noise", "--backbone", "toy", "--chunk-rows", "4", "--batch-size", "4"]
NOISE += ["--workers", "0", "--dtype", "float32", "--no-progress", "--device", "cpu"]


def test_a_parted_store_replaced_under_its_filler_is_not_claimed_complete(tmp_path):
    """Job A fills a parted store (--shard 0/1) while job B replaces it (--overwrite): A went
    on into deleted files, then printed "store complete: 24 images in 0 parts" (B's store)
    and exited 0."""
    out, hold = tmp_path / "s.h5", tmp_path / "hold"
    hold.touch()
    env = {**os.environ, "PYTHONPATH": str(CHILD.parent.parent), "OMP_NUM_THREADS": "1"}
    env["NOISE"] = json.dumps({"n": 24, "hold_at": 20, "hold": str(hold)})
    a = subprocess.Popen(
        [sys.executable, str(CHILD), "cli", *NOISE, "--out", str(out), "--shard", "0/1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        part = tmp_path / "s.parts" / "part-00000.h5"
        deadline = time.monotonic() + 300  # a loaded machine takes long to import torch
        while a.poll() is None and chunks_done(part) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        waiting = a.poll() is None and chunks_done(part) >= 4  # A waits at row 20
        if waiting:
            b = extract(
                NoiseSource(24), "toy", ["pooled"], out=out, overwrite=True, workers=0,
                device="cpu", progress=False, batch_size=4, dtype="float32",
            )  # fmt: skip
            assert b.complete and b.parts is None
    finally:
        hold.unlink()  # before waiting for A, which waits for it (else both wait forever)
        try:
            said = a.communicate(timeout=120)[0]
        except subprocess.TimeoutExpired:
            a.kill()
            said = a.communicate()[0]
    assert waiting, said
    assert a.returncode != 0, said
    assert "store complete" not in said and "Traceback" not in said, said
    assert "was replaced by another job" in said, said


def _store(path: Path, **attrs) -> Path:
    """A complete 4-row store with ``attrs`` (JSON objects) among its root attributes."""
    write_arrays(
        path, {"pooled": np.ones((4, 2), np.float32)}, [0, 1, 0, 1], ["train"] * 4,
        ["a", "b"], attrs={"key": path.stem, **attrs},
    )  # fmt: skip
    return path


def test_cache_list_names_each_folder_stores_folder_not_its_kind(tmp_path, capsys):
    """Every folder store was listed as 'ImageFolderSource': two caches of two datasets could
    not be told apart."""
    folder = {"kind": "ImageFolderSource", "layout": "flat", "images": 4}
    _store(tmp_path / "one.h5", source={**folder, "root": "/data/pets"})
    _store(tmp_path / "two.h5", source={**folder, "root": "/data/flowers102"})
    _store(tmp_path / "three.h5", source={"kind": "ManifestSource", "csv": "/d/birds.csv"})
    _store(tmp_path / "four.h5", source={"kind": "HFSource", "name": "cifar10"})
    assert main(["cache", "list", str(tmp_path)]) == 0
    rows = {line.split()[-1]: line for line in capsys.readouterr().out.splitlines()}
    assert "pets" in rows["one.h5"] and "flowers102" in rows["two.h5"]
    assert "birds.csv" in rows["three.h5"] and "cifar10" in rows["four.h5"]
    assert not any("ImageFolderSource" in line for line in rows.values())


@pytest.mark.parametrize("value", ['"abc"', "[1, 2]", "3"])
@pytest.mark.parametrize("attr", ["source", "backbone"])
def test_a_json_attribute_that_is_not_an_object_is_one_line(tmp_path, capsys, attr, value):
    """A featpipe-format file whose source/backbone attribute is valid JSON but not an object
    made `cache list`/`prune`, `info` and export to parquet fail with an AttributeError
    traceback; its features still read."""
    path = _store(tmp_path / "s.h5", source={"kind": "X"}, backbone={"spec": "toy"})
    with h5py.File(path, "r+") as f:
        f.attrs[attr] = value
    assert main(["cache", "list", str(tmp_path)]) == 0
    listed = capsys.readouterr().out
    assert "complete" in listed and "(damaged)" in listed
    assert main(["cache", "prune", str(tmp_path), "--incomplete", "--yes"]) == 0
    assert path.exists()  # its rows read: not pruned as unreadable
    for argv in (["info", str(path)], ["export", str(path), "--out", str(tmp_path / "e.parquet")]):
        code = main(argv)
        said = capsys.readouterr()
        if attr == "backbone":  # described there: the file is named as damaged, in one line
            assert code == 2 and "s.h5 is damaged or was not written by featpipe" in said.err
        else:
            assert code == 0, said.err
    assert FeatureStore(path).arrays("pooled")[0].shape == (4, 2)


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs /proc")
def test_consolidate_into_proc_names_the_folder_not_free_space(tmp_path, capsys):
    """`featpipe consolidate --out /proc/c.h5` said "Not enough free space ... 0 B free": the
    cause is that /proc holds no files, which no freeing of space fixes."""
    parted = extract(
        NoiseSource(8), "toy", ["pooled"], out=tmp_path / "p.h5", shard=(0, 1), workers=0,
        device="cpu", progress=False, batch_size=4, dtype="float32",
    )  # fmt: skip
    assert parted.complete and parted.parts
    assert main(["consolidate", "--out", "/proc/c.h5", str(parted.path)]) == 2
    said = capsys.readouterr().err
    assert "Cannot write /proc/c.h5" in said and "holds no files" in said, said
    assert "free space" not in said and "Traceback" not in said
