"""An extraction whose --out is an existing file that is not a store: the advice fits an output."""

import numpy as np
import pytest

from featpipe.data import ArraySource
from featpipe.errors import StoreMismatchError
from featpipe.extract import extract


def _source():
    rng = np.random.default_rng(0)
    return ArraySource(rng.integers(0, 255, (4, 16, 16, 3), dtype=np.uint8), [0, 1, 0, 1])


def test_an_out_file_that_is_not_a_store_is_named_so_with_the_fix_for_an_output(tmp_path, capsys):
    out = tmp_path / "notes.txt"
    out.write_text("my notes\n")
    with pytest.raises(StoreMismatchError) as info:
        extract(_source(), "efficientnet_lite0", out=out, progress=False)
    text = str(info.value)
    assert "is not a featpipe store" in text and "not an HDF5 file" in text
    assert "--overwrite" in text and "another path" in text
    assert "Give the path of a featpipe store" not in text  # that advice is for inputs
    assert out.read_text() == "my notes\n"
