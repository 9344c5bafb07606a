"""Extraction's messages in each caller's words: Python its parameters, the command line its
flags (featpipe.cli.as_flags), a pipeline its file (featpipe.pipeline.runner.in_file_words).
Library code named flags (--shard, --overwrite, --workers, --cache-dir) a Python caller has not."""

from __future__ import annotations

import argparse
import importlib
import types

import pytest
import toy_backbone  # noqa: F401  (registers 'toy')

from featpipe.cli import as_flags, build_parser
from featpipe.errors import ConfigError, ImageReadError, StoreMismatchError
from featpipe.extract import loop, parted
from featpipe.extract.target import Action
from featpipe.pipeline.runner import in_file_words

# featpipe.extract re-exports a function named extract: the module itself, by its path.
extractor = importlib.import_module("featpipe.extract.extractor")


def command(name: str) -> argparse.ArgumentParser:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise LookupError(name)


def test_a_shard_under_torchrun_is_named_as_python_and_the_command_line_give_it(monkeypatch):
    """Python read 'Leave --shard out.'; the tuple (0, 2) is '--shard 0/2' on the command line,
    which as_flags cannot map, so the message gives both."""
    monkeypatch.setattr(extractor, "under_torchrun", lambda: True)
    with pytest.raises(ConfigError) as caught:
        extractor.extract("unused", "toy", shard=(0, 2))
    said = str(caught.value)
    assert said.startswith("shard=(0, 2) (CLI: --shard 0/2) is for job arrays without torchrun")
    assert "Leave --shard out" not in said and said.endswith("Leave it out.")


def test_a_cache_dir_that_is_a_file_names_the_parameter_and_its_flag(image_folder, tmp_path):
    """Python read 'Choose another --cache-dir.' and 'out' as '--out'."""
    (tmp_path / "cache").write_text("not a folder")
    with pytest.raises(ConfigError) as caught:
        extractor.plan_extraction(str(image_folder), "toy", cache_dir=tmp_path / "cache")
    said = str(caught.value)
    assert said.endswith("Choose another cache_dir (CLI: --cache-dir).")
    assert as_flags(said, command("extract")).endswith("Choose another --cache-dir.")

    (tmp_path / "folder").mkdir()
    with pytest.raises(ConfigError) as caught:
        extractor.plan_extraction(str(image_folder), "toy", out=tmp_path / "folder")
    assert str(caught.value).startswith(f"out {tmp_path / 'folder'} is a folder")


def test_a_half_written_one_file_store_names_shard_and_overwrite_in_each_callers_words(
    tmp_path, monkeypatch
):
    """Python read 'without torchrun or --shard' and 'with --overwrite'."""
    monkeypatch.setattr(parted, "decide", lambda *_: Action.RESUME)
    monkeypatch.setattr(parted, "parted_at", lambda _: False)
    request = types.SimpleNamespace(key="k")
    plan = types.SimpleNamespace(
        path=tmp_path / "s.h5", lock_timeout=None, overwrite=False, request=request
    )
    with pytest.raises(ConfigError) as caught:
        parted.prepare(plan, inference=None)
    said = str(caught.value)
    assert "without torchrun and without a shard (CLI: --shard))" in said
    assert said.endswith("start it again in parts with overwrite=True.")
    cli = as_flags(said, command("extract"))
    assert cli.endswith("start it again in parts with --overwrite.") and "=" not in cli
    assert in_file_words(said).endswith("start it again in parts after deleting the store.")


def test_a_replaced_parted_store_says_what_the_other_job_did_without_a_flag(tmp_path):
    """'(an extraction with --overwrite)' named a flag a Python job does not pass."""
    with pytest.raises(StoreMismatchError) as caught:
        parted._refuse_replaced(tmp_path / "gone.h5", (0, 0))
    said = str(caught.value)
    assert "(an extraction that overwrote it)" in said and "--" not in said


def test_a_dead_worker_names_workers_and_batch_size_as_each_caller_sets_them(tmp_path):
    """Python read 'fewer --workers or a smaller --batch-size'."""
    said = str(loop.worker_died("DataLoader worker (pid 7) is killed", 2, 5, tmp_path / "s.h5"))
    assert "fewer workers (CLI: --workers) or a smaller batch_size (CLI: --batch-size)" in said
    cli = as_flags(said, command("extract"))
    assert "with fewer --workers or a smaller --batch-size if memory ran out." in cli
    assert "CLI:" not in cli


def test_as_flags_gives_a_parameter_named_with_its_flag_as_the_flag_alone():
    extract = command("extract")
    assert as_flags("Choose another cache_dir (CLI: --cache-dir).", extract) == (
        "Choose another --cache-dir."
    )
    # Not the command's flag, or not the parameter's: as it was.
    for message in ("more epochs (CLI: --epochs)", "fewer workers (CLI: --batch-size)"):
        assert as_flags(message, extract) == message


def test_a_pipeline_is_told_to_delete_a_store_with_skipped_images_not_to_overwrite(tmp_path):
    """A pipeline read '(with overwrite=True if only file permissions changed)': it has no
    overwrite setting; deleting the store it names is what replaces it."""
    store = types.SimpleNamespace(path=tmp_path / "s.h5", skipped=lambda: {"a.jpg": "truncated"})
    with pytest.raises(ImageReadError) as caught:
        extractor._refuse_skipped(store, "fail")
    said = in_file_words(str(caught.value))
    assert "run again (after deleting the store if only file permissions changed)." in said
    assert "overwrite" not in said and 'Pass features.on_error = "skip"' in said
