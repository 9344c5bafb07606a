"""Trust sweep of featpipe.distributed (session 12)."""

from __future__ import annotations

import pytest

from featpipe.distributed import current_ranks, under_torchrun
from featpipe.errors import ConfigError

TORCHRUN = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def no_torchrun(monkeypatch):
    for name in TORCHRUN:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("rest", [{}, {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}])
def test_a_rank_above_0_without_torchruns_variables_is_refused(no_torchrun, rest):
    """RANK=1 without WORLD_SIZE (a launcher script exporting RANK from SLURM_PROCID) made this
    process rank 0 of 1: each process did the whole job alone, as for WORLD_SIZE=2 (5b8e8cc)."""
    no_torchrun.setenv("RANK", "1")
    for name, value in rest.items():
        no_torchrun.setenv(name, value)
    with pytest.raises(ConfigError, match=r"RANK=1 says this process is one of several.*WORLD"):
        current_ranks()
    with pytest.raises(ConfigError, match="unset RANK"):
        under_torchrun()


@pytest.mark.parametrize("env", [{"RANK": "0"}, {"RANK": "0", "WORLD_SIZE": "1"}, {"RANK": "x"}])
def test_rank_0_or_no_number_without_torchrun_is_still_one_process(no_torchrun, env):
    for name, value in env.items():
        no_torchrun.setenv(name, value)
    assert current_ranks().world_size == 1 and not under_torchrun()
