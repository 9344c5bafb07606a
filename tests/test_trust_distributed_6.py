"""Trust review of extraction under torchrun with 3 gloo ranks on the CPU."""

from __future__ import annotations

import re
import subprocess
import sys

from test_distributed_extract import CHILD, env, reference
from test_store_parts import same_store

# 50 noise images in chunks of 3: 17 chunks in parts that 3 ranks cannot share evenly.
NOISE = ["extract", "noise", "--backbone", "toy", "--chunk-rows", "3", "--batch-size", "3"]
NOISE += ["--workers", "0", "--dtype", "float32"]


def test_three_ranks_fill_the_store_of_one_process_and_each_ends_its_progress_done(tmp_path):
    """A rank's progress total is a guess (rows / ranks): a rank that claimed fewer rows
    ended its log on 'featpipe [rank 2/3] extract ranks.h5: 15 of 16 img (93.8%), ..., ETA 0s'
    (or '0 of 16 img (0.0%)'), as if it had stopped short, though its share was done."""
    out = tmp_path / "ranks.h5"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", "3", "--monitor-interval", "0.5", str(CHILD), "cli"]
    done = subprocess.run(
        [*command, *NOISE, "--out", str(out)],
        env=env(NOISE='{"n": 50}', FEATPIPE_PROGRESS_INTERVAL="0.2"),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("features written to") == 1  # rank 0 alone says how it went
    same_store(reference(tmp_path, [*NOISE, "--no-progress"], child=True, NOISE='{"n": 50}'), out)
    for rank in range(3):
        lines = [line for line in done.stderr.splitlines() if f"[rank {rank}/3] extract" in line]
        assert lines, done.stderr[-3000:]
        last = lines[-1]
        assert "ETA" not in last, last
        counted = re.search(r": ([\d,]+) of ([\d,]+) img", last)
        assert counted is None or counted[1] == counted[2], last
