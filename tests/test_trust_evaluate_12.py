"""A huge n_boot passed the pipeline check and then ran for hours (10**12 resamples, in batches
of 100): it is refused up front, naming the limit."""

import pytest

from featpipe.errors import ConfigError
from featpipe.evaluate.metrics import MAX_BOOT, check_n_boot
from featpipe.pipeline import config_from_dict


def test_a_huge_n_boot_is_refused_naming_the_limit():
    check_n_boot(MAX_BOOT)
    with pytest.raises(ConfigError, match="at most 100,000"):
        check_n_boot(10**12)


def test_a_pipeline_with_a_huge_n_boot_is_refused_at_the_check(tmp_path):
    with pytest.raises(ConfigError, match="n_boot is 1,000,000,000,000"):
        config_from_dict(
            {"name": "x", "out": str(tmp_path / "run"), "n_boot": 10**12,
             "source": {"data": "digits"}, "features": {"backbones": ["toy"]}}
        )  # fmt: skip
