"""Trust sweep of featpipe.distributed (session 13): ranks started with other settings."""

from __future__ import annotations

from pathlib import Path

from test_trust_distributed import torchrun

from featpipe.distributed import refuse_other_settings

REPO = Path(__file__).resolve().parents[1]

# A 2-rank DDP fine-tune where rank 1 changes the keyword arguments in $RANK1 (a Python dict)
# of its FineTuner, or its source's split sizes in $RANK1_SPLITS ("n_train,n_val").
CHILD = """
import os, sys
sys.path.insert(0, {tests!r})
import torch
from finetune_child import synthetic_source
from featpipe.distributed import current_ranks, process_group
from featpipe.errors import FeaturePipeError
from featpipe.finetune import FineTuner

rank = current_ranks().rank
torch.set_num_threads(1)
params = dict(mode="full", epochs=1, batch_size=8, lr=0.05, patience=None, verbose=0, seed=3)
n_train, n_val = 24, 8
if rank == 1:
    params.update(eval(os.environ.get("RANK1", "{{}}")))
    n_train, n_val = map(int, os.environ.get("RANK1_SPLITS", "24,8").split(","))
tuner = FineTuner("toy", run_dir=sys.argv[1], **params)
try:
    with process_group("cpu"):
        tuner.fit(synthetic_source(n_train=n_train, n_val=n_val, n_test=4))
except FeaturePipeError as exc:
    sys.stdout.write(f"rank {{rank}} refused: {{exc}}\\n"); sys.stdout.flush()  # one write
    sys.exit(2)
sys.stdout.write(f"rank {{rank}} trained\\n"); sys.stdout.flush()
""".format(tests=str(REPO / "tests"))


def test_ddp_ranks_with_another_learning_rate_or_split_are_refused_on_every_rank(tmp_path):
    """Rank 1 started with lr 0.5 where rank 0 had 0.05 trained beside it: DDP averaged the
    gradients and each rank stepped with its own rate (the ranks ended with other weights,
    rank 0 saving its own). Every rank now refuses, naming the settings, before training."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    rc, out, err = torchrun(
        script,
        str(tmp_path / "run"),
        timeout=120,
        RANK1='{"lr": 0.5, "verbose": 1}',
        RANK1_SPLITS="20,12",
    )
    assert rc != 0, out + err[-3000:]
    assert "trained" not in out
    for rank in (0, 1):
        line = next(x for x in out.splitlines() if x.startswith(f"rank {rank} refused"))
        assert "rank 1 lr 0.5 (rank 0: 0.05)" in line
        assert "rank 1 source 36 images" in line  # same count, other splits
        assert "verbose" not in line  # each rank's own
    assert not (tmp_path / "run" / "last.pt").exists()


def test_settings_are_not_compared_outside_a_process_group():
    refuse_other_settings({"lr": 0.1}, "fine-tune", source=None)


# A streamed logistic regression on every rank of 2; rank 1 adds $RANK1 (a Python dict) to
# the head's parameters.
STREAMED = """
import os, sys
from featpipe.distributed import current_ranks
from featpipe.errors import FeaturePipeError
from featpipe.heads.streamed_logreg import StreamingLogisticProbe
from featpipe.store import FeatureStore

rank = current_ranks().rank
params = dict(C=0.5, chunk_rows=40, device="cpu", n_threads=1)
if rank == 1:
    params.update(eval(os.environ["RANK1"]))
try:
    StreamingLogisticProbe(**params).fit_store(FeatureStore(sys.argv[1]), "pooled", ["train"])
except FeaturePipeError as exc:
    sys.stdout.write(f"rank {rank} refused: {exc}\\n"); sys.stdout.flush()  # one write
    sys.exit(2)
sys.stdout.write(f"rank {rank} fitted\\n"); sys.stdout.flush()
"""


def test_streamed_logreg_ranks_with_another_c_are_refused_on_every_rank(tmp_path):
    """Rank 1 with C=50 beside rank 0's C=0.5 fitted silently: the ranks summed one
    objective with two regularisations, and rank 0's coefficients were neither C's."""
    from test_heads_streamed import a_store

    store = tmp_path / "s.h5"
    a_store(store, n=200)
    script = tmp_path / "streamed.py"
    script.write_text(STREAMED)
    rc, out, err = torchrun(script, str(store), timeout=120, RANK1='{"C": 50.0}')
    assert rc != 0, out + err[-3000:]
    assert "fitted" not in out
    for rank in (0, 1):
        line = next(x for x in out.splitlines() if x.startswith(f"rank {rank} refused"))
        assert "rank 1 Cs [50.0] (rank 0: [0.5])" in line
