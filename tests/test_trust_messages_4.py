"""The last library messages that named flags, in each caller's words: Python reads its
parameters, the command line its flags (featpipe.cli.as_flags), a pipeline its keys
(pipeline.runner.in_file_words). They said --dtype, --val-fraction, --out and --on-error to
Python callers, or a flag and a single-quoted setting side by side."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from featpipe.cli import as_flags, build_parser, main
from featpipe.errors import ConfigError, NonFiniteFeaturesError
from featpipe.extract.embedder import Embedder
from featpipe.heads.selection import select_and_fit
from featpipe.pipeline.runner import in_file_words
from featpipe.store.export import export_features
from featpipe.store.writer import copy_failed, write_arrays


def command(name: str) -> argparse.ArgumentParser:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise LookupError(name)


def two_rows(path, values, dtype="float32"):
    return write_arrays(path, {"pooled": values}, [0, 1], ["train", "test"], "ab", dtype=dtype)


def test_embedding_beyond_float16_names_the_dtype_setting_and_the_extract_flag():
    """Python read 'extracted with --dtype float32 ... dtype='float32''; featpipe predict,
    the command that reaches it, has no --dtype, so the message names both."""
    emb = Embedder("efficientnet_lite0", dtype="float16")
    emb.layer = "pooled"
    with pytest.raises(NonFiniteFeaturesError) as caught:
        emb._as_stored(np.full((1, 2), 1e6, np.float32), [np.zeros((4, 4, 3), np.uint8)])
    said = str(caught.value)
    assert said.endswith(
        'train a head on a store extracted with dtype="float32" (CLI: featpipe extract '
        '--dtype float32) and embed them with dtype="float32", as featpipe predict does for '
        "such a head."
    )
    assert "'float32'" not in said
    assert as_flags(said, command("predict")) == said


def test_a_streamed_head_without_a_val_split_names_val_fraction_and_the_extract_flag(tmp_path):
    """Python read 'Extract with a val split (--val-fraction)'; featpipe probe has no such flag."""
    labels, splits = [0, 1] * 4, ["train"] * 6 + ["test"] * 2
    store = write_arrays(tmp_path / "s.h5", {"pooled": np.eye(8)[:, :3]}, labels, splits, "ab")
    with pytest.raises(ConfigError) as caught:
        select_and_fit("logreg_stream", store, "pooled")
    said = str(caught.value)
    assert said.endswith(
        "Extract with a val split (val_fraction=0.1; CLI: featpipe extract --val-fraction "
        "0.1), or use an in-memory head."
    )
    assert as_flags(said, command("probe")) == said


def test_a_refused_copy_names_out_and_the_command_line_its_flag(tmp_path):
    """Python read 'choose another --out' from export_features and consolidate."""
    said = str(copy_failed(tmp_path / "o.h5", OSError(28, "No space left on device")))
    assert "free some space, or choose another out (CLI: --out), then run" in said
    for name in ("export", "consolidate"):
        flags = as_flags(said, command(name))
        assert "free some space, or choose another --out, then run" in flags


def test_a_float16_overflow_names_the_dtype_setting_once_per_caller(tmp_path):
    """Every caller read '(--dtype float32, or dtype='float32')'."""
    with pytest.raises(NonFiniteFeaturesError) as caught:
        two_rows(tmp_path / "f.h5", np.full((2, 2), 1e6), dtype="float16")
    said = str(caught.value)
    assert said.endswith('Store the features as float32 (dtype="float32").')
    cli = as_flags(said, command("extract"))
    assert cli.endswith("Store the features as float32 (--dtype float32).")


def test_a_backbones_nan_names_on_error_in_each_callers_words(tmp_path):
    """Every caller read '(extraction with --on-error skip, on_error='skip', records ...)'."""
    with pytest.raises(NonFiniteFeaturesError) as caught:
        two_rows(tmp_path / "n.h5", np.array([[np.nan, 1.0], [1.0, 1.0]]))
    said = str(caught.value)
    tail = "records such images as skipped and goes on)."
    assert said.endswith(f'(an extraction with on_error="skip" {tail}')
    cli = as_flags(said, command("extract"))
    assert cli.endswith(f"(an extraction with --on-error skip {tail}")
    assert in_file_words(said).endswith(f'(an extraction with features.on_error = "skip" {tail}')


def test_an_existing_file_names_force_for_python_and_the_flag_for_the_command_line(
    tmp_path, capsys
):
    """Pinned: a Python caller reads both words (force=True is its setting), the command
    line the flag alone."""
    store = two_rows(tmp_path / "s.h5", np.ones((2, 2)))
    out = tmp_path / "e.npz"
    out.write_text("keep me")
    with pytest.raises(ConfigError) as caught:
        export_features(store, "pooled", out)
    assert str(caught.value) == f"{out} exists; pass --force (force=True) to replace it."
    store.close()
    assert main(["export", str(tmp_path / "s.h5"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"featpipe export: error: {out} exists; pass --force to replace it."
    assert out.read_text() == "keep me"
