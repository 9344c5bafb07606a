"""The table `featpipe probe` prints shows the search's seconds beside the refit's."""

from __future__ import annotations

from featpipe.cli.heads import _print_table, _row


def test_the_probe_table_shows_the_search_seconds_not_only_the_refit(capsys) -> None:
    entry = {
        "head": "logreg",
        "params": {"C": 1.0},
        "val_accuracy": 0.9,
        "test_accuracy": 0.8,
        "select_seconds": 81.5,
        "fit_seconds": 1.24,
    }
    _print_table([_row(entry)], few_shot=False)
    header, _, row = capsys.readouterr().out.splitlines()
    assert "search s" in header and "refit s" in header
    assert "81.50" in row and "1.24" in row
