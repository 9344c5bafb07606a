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

from extract_child import NoiseSource, chunks_done

from featpipe.extract import extract

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
        deadline = time.monotonic() + 60
        while a.poll() is None and chunks_done(part) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert chunks_done(part) == 4, a.communicate()[0]  # A waits at row 20
        b = extract(
            NoiseSource(24), "toy", ["pooled"], out=out, overwrite=True, workers=0,
            device="cpu", progress=False, batch_size=4, dtype="float32",
        )  # fmt: skip
        assert b.complete and b.parts is None
    finally:
        hold.unlink()
        said = a.communicate(timeout=60)[0]
    assert a.returncode != 0, said
    assert "store complete" not in said and "Traceback" not in said, said
    assert "was replaced by another job" in said, said
