"""A subcommand's positional arguments are named the same in its usage and in its errors."""

from __future__ import annotations

import argparse

import pytest

from featpipe.cli import build_parser, main


def _positionals(parser: argparse.ArgumentParser, name: str = "featpipe"):
    """(command, action) for every positional argument of every (sub)command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, chosen in action.choices.items():
                yield from _positionals(chosen, f"{name} {sub}")
        elif not action.option_strings:
            yield name, action


def test_every_positional_is_named_in_capitals():
    """`featpipe probe` alone said "required: store" and its usage "store", where every other
    command says STORE, SOURCE, HEAD: its positional had no metavar."""
    unnamed = [
        f"{command} {action.dest}"
        for command, action in _positionals(build_parser())
        if not (isinstance(action.metavar, str) and action.metavar.isupper())
    ]
    assert not unnamed


def test_probe_without_a_store_names_it_as_its_usage_does(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["probe"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err == "featpipe probe: error: the following arguments are required: STORE\n"
    with pytest.raises(SystemExit):
        main(["probe", "--help"])
    usage = capsys.readouterr().out.split("\n\n")[0]
    assert usage.split()[-1] == "STORE"
