"""LP-FT's probe that chose its C on val rows that cannot choose says so (the heads' rule), and
a grid fitted under torchrun by a script with no process group holds one around its
candidates: its checks see the ranks and only rank 0 warns."""

from __future__ import annotations

import warnings

import pytest
import toy_backbone  # noqa: F401  (registers the 'toy' backbone)
from finetune_child import synthetic_source
from test_trust_distributed import REPO, torchrun

from featpipe.finetune import FineTuner

PROBE = "LP-FT's probe chose C="


@pytest.mark.filterwarnings("ignore:The fine-tune chose")
def test_an_lpft_probe_whose_val_cannot_choose_its_c_warns():
    # Before: the probe chose C among 6 values on 1 val row without a word of its own.
    source = synthetic_source(n_train=12, n_val=1, n_test=0)
    tuner = FineTuner("toy", mode="lpft", epochs=0, batch_size=4, verbose=0)
    with pytest.warns(UserWarning, match=PROBE) as caught:
        tuner.fit(source)
    [said] = [str(w.message) for w in caught if PROBE in str(w.message)]
    assert "on 1 val row, no better than predicting class" in said
    assert "set probe_C (CLI --probe-C)" in said and "carved" not in said


@pytest.mark.filterwarnings("ignore:The fine-tune chose")
def test_an_lpft_probe_of_a_set_c_or_a_val_that_chooses_does_not_warn():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        FineTuner("toy", mode="lpft", epochs=0, probe_C=1.0, verbose=0).fit(
            synthetic_source(n_train=12, n_val=1, n_test=0)
        )
        FineTuner("toy", mode="lpft", epochs=0, verbose=0).fit(synthetic_source())
    assert not [w for w in caught if PROBE in str(w.message)]


# fit_grid from a script under torchrun, with no process group around it.
GRID = """
import sys, warnings
sys.path.insert(0, {tests!r})
import torch
import toy_backbone
from finetune_child import synthetic_source
from featpipe.distributed import current_ranks
from featpipe.errors import FeaturePipeError
from featpipe.finetune import FineTuner
from featpipe.finetune.search import fit_grid

rank = current_ranks().rank
torch.set_num_threads(1)
warnings.simplefilter("always")
# One write per line (text and newline together): two ranks share one pipe.
say = lambda line: print(line + "\\n", end="", flush=True)
warnings.showwarning = lambda m, *a, **k: say(f"rank {{rank}} warns: {{m}}")
source = synthetic_source(n_train=8, n_val=1, n_test=0)
tuner = FineTuner("toy", epochs=1, batch_size=4, patience=None, verbose=0, run_dir=sys.argv[1])
try:
    fit_grid(tuner, source, {{sys.argv[2]: eval(sys.argv[3])}})
except FeaturePipeError as exc:
    say(f"rank {{rank}} refused: {{exc}}")
""".format(tests=str(REPO / "tests"))


def test_a_grid_under_torchrun_without_a_process_group_checks_and_warns_as_one_job(tmp_path):
    # Before: each candidate's fit made and destroyed its own group, so fit_grid saw one
    # process per rank: rank 1 warned about the chosen candidate too, and a candidate of
    # batch_size 2 over 2 ranks (1 image through batch norm) was refused only after the
    # candidate before it had trained.
    script = tmp_path / "grid.py"
    script.write_text(GRID)
    # One grid per job: a process group made again in one process may meet the last one's
    # addresses (featpipe.distributed.process_group keys a group by its restart only).
    rc, out, err = torchrun(script, str(tmp_path / "lr"), "lr", "[0.01, 0.02]", timeout=120)
    assert rc == 0, err[-3000:]
    chose = [line for line in out.splitlines() if "chose grid candidate" in line]
    assert len(chose) == 1 and chose[0].startswith("rank 0 warns"), out
    rc, out, err = torchrun(script, str(tmp_path / "bs"), "batch_size", "[4, 2]", timeout=120)
    assert rc == 0, err[-3000:]
    refused = [line for line in out.splitlines() if "refused: grid candidate" in line]
    assert len(refused) == 2 and "(2 ranks, 1 image each)" in refused[0], out
    assert not (tmp_path / "bs").exists()  # refused before the first candidate trained
