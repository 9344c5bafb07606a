"""Heads: few-shot's tied-vote warning for a whole float n_neighbors, and more."""

from __future__ import annotations

import numpy as np
import pytest
from test_trust_heads_10 import _rows

from featpipe.heads import KNNProbe, few_shot


@pytest.mark.parametrize("n_neighbors", [5.0, np.float64(5)])
def test_few_shot_warns_of_tied_votes_for_a_whole_float_n_neighbors(n_neighbors):
    # kNN runs n_neighbors=5.0 as 5, whose 1-shot votes all tie as 5's do; only an int warned.
    data = {"train": _rows([10] * 3, 1), "test": _rows([10] * 3, 2)}
    with pytest.warns(UserWarning, match="every vote ties"):
        few_shot(KNNProbe(n_neighbors), data, k=1, draws=2)
