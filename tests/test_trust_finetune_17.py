"""A fine-tune grid's tie goes to the same candidate whatever order the grid lists it in, as
the heads' selection does (tests/test_trust_heads_13.py)."""

from __future__ import annotations

import pytest
from finetune_child import synthetic_source

from featpipe.finetune import FineTuner
from featpipe.finetune.search import fit_grid


@pytest.mark.parametrize("order", [[1e-9, 1e-8], [1e-8, 1e-9]])
def test_a_tie_goes_to_the_same_candidate_whatever_the_grids_order(order):
    """Two learning rates too small to move the model tie at the untrained model's val
    accuracy: the first listed won, so the order of a list in a config chose the model."""
    tuner = FineTuner(backbone="toy", epochs=1, batch_size=8, patience=None, verbose=0, seed=0)
    result = fit_grid(tuner, synthetic_source(n_train=24, n_val=12, n_test=6), {"lr": order})
    (_, score_a), (_, score_b) = result.curve
    assert score_a == score_b  # a tie
    assert result.params == {"lr": 1e-9}  # the smallest, in either order
