"""The store reader's fixes in each caller's words: Python reads its settings with double
quotes (as_flags maps only name="value"), and featpipe extract's flags where the command
that reaches them (info, probe, export, check) has none or another meaning. They said
'--overwrite (overwrite=True), and with --dtype float32 (dtype='float32')' and 'another --out
to extract to (--overwrite, overwrite=True, would replace it)' to every caller."""

from __future__ import annotations

import argparse
from pathlib import Path

import h5py
import numpy as np
import pytest

from featpipe.cli import as_flags, build_parser, main
from featpipe.errors import UnreadableStoreError
from featpipe.pipeline.runner import in_file_words
from featpipe.store import FeatureStore
from featpipe.store.reader import not_finite_message

REEXTRACT = (
    'Extract it again with overwrite=True (CLI: featpipe extract --overwrite), and with dtype="'
    "float32\" (CLI: featpipe extract --dtype float32) where the layer's activations exceed "
    "float16's 65504."
)
FOREIGN = (
    "It may hold another program's data: give the path of a featpipe store, or extract to "
    "another out, or extract again with overwrite=True, which replaces it (CLI: featpipe "
    "extract --out, --overwrite)."
)


def command(name: str) -> argparse.ArgumentParser:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise LookupError(name)


def test_values_not_finite_name_the_settings_and_extracts_flags():
    found = {"pooled": {"rows": 1, "ids": ["img2"], "kind": "NaN"}}
    said = not_finite_message(Path("s.h5"), found)
    assert said.endswith(REEXTRACT), said
    for name in ("check", "probe", "info", "export", "extract"):  # none rewrites it
        assert as_flags(said, command(name)) == said
    # A pipeline has no flags: its key, and no command line aside (test_trust_pipeline_20).
    assert in_file_words(said).endswith(
        'Extract it again after deleting the store, and with features.dtype = "float32" where '
        "the layer's activations exceed float16's 65504."
    )


@pytest.fixture
def foreign(tmp_path):
    path = tmp_path / "model.h5"
    with h5py.File(path, "w") as f:
        f["weights"] = np.zeros(3)
    return path


def test_another_programs_file_names_extracts_out_not_the_commands(foreign, capsys):
    with pytest.raises(UnreadableStoreError) as caught:
        FeatureStore(foreign)
    assert str(caught.value).endswith(FOREIGN), caught.value
    # probe's --out is its report, not a store: the flags are featpipe extract's
    assert as_flags(str(caught.value), command("probe")) == str(caught.value)
    assert main(["info", str(foreign)]) == 2
    assert capsys.readouterr().err.rstrip().endswith(FOREIGN)
