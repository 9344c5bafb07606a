"""A new user's first hour with the ``featpipe`` command: common mistakes are one line naming
the fix, and Ctrl-C keeps what was finished."""

from __future__ import annotations

import pytest
from conftest import make_chunked_store

from featpipe.cli import main


@pytest.fixture
def chunked(tmp_path):
    """A complete 40-row store (train 20, test 20) of one layer, 'pooled'."""
    path = tmp_path / "s.h5"
    make_chunked_store(path)
    return path


def _usage_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["probe", "S", "--layers", "pooled"], "did you mean --layer?"),
        (["probe", "S", "--hedas", "knn"], "did you mean --heads?"),
        (["extract", "digits", "--layer-s", "pooled"], "did you mean --layers?"),
    ],
)
def test_a_misspelt_option_is_the_subcommands_error_with_a_close_match(argv, said, capsys):
    err = _usage_error(argv, capsys)
    # the subcommand's usage and name (it was `featpipe: error:` under the top-level usage)
    assert f"featpipe {argv[0]}: error: unrecognized arguments: {argv[2]}" in err
    assert said in err and f"usage: featpipe {argv[0]}" in err
