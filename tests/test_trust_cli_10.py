"""The command line's errors are one line, said once, under the command the user typed."""

from __future__ import annotations

import pytest

from featpipe.cli import main


def _error(argv: list[str], capsys) -> str:
    """The standard error of ``featpipe argv``, which must fail with status 2."""
    try:
        code = main(argv)  # a FeaturePipeError: returned
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    assert code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["extract", "digits", "--dtype", "float61"], "invalid choice: 'float61'"),
        (["probe"], "the following arguments are required: store"),
        (["cache", "lisst"], "invalid choice: 'lisst'"),
    ],
)
def test_a_usage_error_is_one_line(argv, said, capsys):
    """A bad choice printed the subcommand's whole usage (15 lines for extract) before its
    error, though `featpipe --help` says errors print one line."""
    err = _error(argv, capsys)
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"featpipe {argv[0]}: error: ") and said in err


def test_a_missing_store_gives_its_hint_once(tmp_path, capsys):
    """`featpipe check` added 'Pass the path of a .h5 file' to the reader's own 'Check the
    path; ...' hint: the same advice twice."""
    missing = tmp_path / "nothere.h5"
    err = _error(["check", str(missing)], capsys)
    assert f"No feature store at {missing}: no such file" in err
    assert len(err.strip().splitlines()) == 1
    assert err.count("Check the path") == 1 and "Pass the path" not in err


def test_an_error_of_a_sub_action_names_it(tmp_path, capsys):
    """`featpipe cache list MISSING` called itself 'featpipe cache' in its error."""
    err = _error(["cache", "list", str(tmp_path / "nonexist")], capsys)
    assert err.startswith("featpipe cache list: error: No cache folder at")
