"""The CLI says what it does: its --help examples can be copied, and its messages match the run."""

from __future__ import annotations

import argparse
import itertools
import re

from conftest import make_image_folder

from featpipe.cli import build_parser
from featpipe.cli import main as cli_main


def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                yield from _subparsers(sub)


def test_every_continued_example_line_follows_a_backslash():
    """A wrapped example in an epilog is copied as one command: the line before each
    continuation ('      --flag ...') must end in a backslash, or the shell runs two commands
    (the finetune --grid example printed its first line without one)."""
    parser = build_parser()
    checked = 0
    for name, sub in [("featpipe", parser), *_subparsers(parser)]:
        lines = (sub.epilog or "").splitlines()
        for before, line in itertools.pairwise(lines):
            if re.match(r"^ {5,}--", line) and re.match(r"^ {2}\S", before):
                checked += 1
                assert before.rstrip().endswith("\\"), (name, before)
    assert checked >= 3


def test_every_subcommand_help_has_examples():
    """README: "Every subcommand has `--help` with examples" (consolidate and report had none)."""
    leaves = [
        (name, sub)
        for name, sub in _subparsers(build_parser())
        if not any(isinstance(a, argparse._SubParsersAction) for a in sub._actions)
    ]
    assert len(leaves) >= 14
    for name, sub in leaves:
        assert "examples:" in (sub.epilog or ""), name
        assert "examples:" in sub.format_help(), name


def test_finetune_header_counts_the_val_rows_it_carves(tmp_path, capsys):
    """A source without a val split: the header printed val 0 while training chose its epoch
    on the val rows carved from train (--val-fraction)."""
    root = make_image_folder(tmp_path / "tt", per_class=10, splits=("train", "test"))
    args = "finetune --backbone toy --mode head --epochs 1 --batch-size 4 --no-progress"
    code = cli_main(
        [
            *args.split(),
            "--data",
            str(root),
            "--val-fraction",
            "0.2",
            "--run-dir",
            str(tmp_path / "r"),
        ]
    )
    assert code == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert "'val': 0" not in header, header
    assert "{'train': 24, 'val': 6, 'test': 30}" in header, header
    assert "--val-fraction 0.2" in header, header
