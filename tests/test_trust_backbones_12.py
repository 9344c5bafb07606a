"""A grid pooling finer than the layer's map is refused, not stored as repeated values."""

from __future__ import annotations

import pytest
import torch

from featpipe.backbones.layers import pool
from featpipe.errors import ConfigError


def test_a_grid_finer_than_the_map_is_refused_naming_the_largest_grid() -> None:
    maps = torch.randn(2, 3, 8, 6)
    assert pool(maps, "grid:6", "stage1").shape == (2, 3 * 36)
    with pytest.raises(ConfigError, match=r"grid:7.*8×6.*grid:6 or less"):
        pool(maps, "grid:7", "stage1")  # 7 cells across 6 columns repeat columns
