"""export_features (and consolidate, through the same writer.OUT) name their output as each
caller sets it: Python read '--out DIR is a folder' (a flag it does not have), and export's
failed write 'choose another --out'. Now Python reads out (CLI: --out), which the command line
shows as --out alone."""

from __future__ import annotations

import numpy as np
import pytest
from test_trust_messages_4 import two_rows

from featpipe.cli import main
from featpipe.errors import ConfigError
from featpipe.store.export import export_features


def test_an_output_folder_is_named_in_each_callers_words(tmp_path, capsys):
    store = two_rows(tmp_path / "s.h5", np.ones((2, 2)))
    folder = tmp_path / "out.npz"
    folder.mkdir()
    with pytest.raises(ConfigError) as caught:
        export_features(store, "pooled", folder)
    assert str(caught.value).startswith(f"out (CLI: --out) {folder} is a folder")
    store.close()
    assert main(["export", str(tmp_path / "s.h5"), "--out", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"featpipe export: error: --out {folder} is a folder"), err
    assert "CLI:" not in err


def test_an_unknown_export_format_names_fmt_and_the_flag(tmp_path):
    """Python read 'give --format npz or parquet'; its parameter is fmt."""
    store = two_rows(tmp_path / "s.h5", np.ones((2, 2)))
    with pytest.raises(ConfigError) as caught:
        export_features(store, "pooled", tmp_path / "e.csv")
    said = str(caught.value)
    assert 'give fmt="npz" or "parquet" (CLI: --format npz or parquet)' in said
    store.close()
