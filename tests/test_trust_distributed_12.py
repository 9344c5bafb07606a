"""Trust sweep of featpipe.distributed (session 14): several process groups in one process,
and the ranks' lines in one shared log."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import WriteRecorder
from test_trust_distributed import torchrun

from featpipe.distributed.progress import LineProgress

# Five process groups, one after the other, in one script on every rank of 2 (as a script
# calling FineTuner.fit five times makes: each fit makes and destroys its own group when the
# script holds none), each summing a tensor over the ranks.
GROUPS = """
import sys
import torch
import torch.distributed as dist
from featpipe.distributed import current_ranks, process_group

rank = current_ranks().rank
for i in range(5):
    with process_group("cpu", timeout_s=60):
        total = torch.ones(1)
        dist.all_reduce(total)
    sys.stdout.write(f"rank {rank} group {i} sum {total.item():.0f}\\n"); sys.stdout.flush()
"""


def test_one_process_makes_several_process_groups_under_torchrun(tmp_path):
    """A group made after another in one process met the first group's keys in torchrun's
    store (keys had the restart count only): its ranks could read the gone group's addresses,
    and gloo failed ("connectFullMesh failed ... Connection refused"). A script fine-tuning
    twice (two FineTuner.fit calls) failed so in its second fit. Each group now has keys of
    its own."""
    script = tmp_path / "groups.py"
    script.write_text(GROUPS)
    rc, out, err = torchrun(script, timeout=120)
    assert rc == 0, err[-3000:]
    done = {f"rank {rank} group {i} sum 2" for rank in (0, 1) for i in range(5)}
    assert set(out.splitlines()) == done, out


def test_a_progress_line_is_one_write_with_its_newline():
    """Under torchrun's `python -u` print wrote a progress line and its newline apart (two
    write calls, seen with strace), so in the ranks' shared log another rank's line could land
    between them: two ranks' lines on one line, the last line of a rank read wrong."""
    stream = WriteRecorder()
    bar = LineProgress(10, desc="extract", unit="img", interval=0.0, stream=stream)
    bar.update(4)
    bar.close()
    assert len(stream.calls) == 2, stream.calls
    assert all(call.endswith("\n") and call.count("\n") == 1 for call in stream.calls)
    assert stream.getvalue().splitlines()[-1].startswith("featpipe extract: 4 of 10 img")


PIPELINE = """
name = "twice"
n_boot = 0
device = "cpu"
[source]
data = "digits"
limits = {{ train = {train}, val = 30, test = 40 }}
[features]
backbones = ["toy"]
image_size = 16
batch_size = 8
workers = 0
cache_dir = {cache!r}
[probes]
heads = ["knn"]
"""
FINETUNE = '\n[finetune]\nmodes = ["head"]\nepochs = 1\nbatch_size = 16\n'

# Two pipeline runs, one after the other, in one script on every rank of 2.
TWO_RUNS = f"""
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
import toy_backbone  # registers 'toy'
from featpipe.cli import main

for i in (1, 2):
    rc = main(["run", f"{{sys.argv[1]}}/p{{i}}.toml", "--out", f"{{sys.argv[1]}}/run{{i}}"])
    sys.stdout.write(f"run {{i}} rc {{rc}}\\\\n"); sys.stdout.flush()
"""


def test_a_script_running_two_pipelines_under_torchrun_plans_each_on_every_rank(tmp_path):
    """The ranks met under one key per restart for a run's plan: in a script's second run,
    rank 1 read the first run's plan (its methods: no fine-tune) while rank 0 had planned a
    fine-tune, so rank 1 left and rank 0 waited for it in the fine-tune's group (a hang, until
    the group's 30-minute timeout). Each run now has keys of its own."""
    cache = str(tmp_path / "cache")
    (tmp_path / "p1.toml").write_text(PIPELINE.format(train=60, cache=cache))
    (tmp_path / "p2.toml").write_text(PIPELINE.format(train=80, cache=cache) + FINETUNE)
    script = tmp_path / "two_runs.py"
    script.write_text(TWO_RUNS)
    rc, out, err = torchrun(script, str(tmp_path), timeout=150)
    assert rc == 0, err[-3000:]
    assert out.count("run 2 rc 0") == 2, out
    rows = [json.loads(r) for r in (tmp_path / "run2" / "results.jsonl").read_text().splitlines()]
    tuned = [r for r in rows if r["kind"] == "finetune"]
    assert len(rows) == 2 and len(tuned) == 1 and tuned[0]["world_size"] == 2
