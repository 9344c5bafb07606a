"""Command-line sweep: `probe --cv` on a store with a val split, `cache` given a file, and
`check --help`'s defaults."""

from __future__ import annotations

import json

import pytest
from test_heads_cli import small_store as _store

from featpipe.cli import main


def test_probe_refuses_cv_on_a_store_with_a_val_split(tmp_path, capsys):
    """`--cv 3` on a store with val rows was accepted and ignored: the heads were chosen on
    val, and nothing said that the folds asked for were not used."""
    store = _store(tmp_path / "s.h5", ("train", "val", "test"))
    assert main(["probe", str(store.path), "--heads", "knn", "--cv", "3"]) == 2
    err = capsys.readouterr().err
    assert "--cv 3" in err and "30 val rows" in err and "Leave --cv out" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("cv, selection", [([], "cv5"), (["--cv", "3"], "cv3")])
def test_probe_without_val_uses_the_folds_asked_for(tmp_path, cv, selection):
    """Without a val split --cv sets the folds, and leaving it out gives 5, as before."""
    store = _store(tmp_path / "s.h5", ("train", "test"))
    out = tmp_path / "r.json"
    assert main(["probe", str(store.path), "--heads", "knn", *cv, "--out", str(out)]) == 0
    (head,) = json.loads(out.read_text())["heads"]
    assert head["selection"] == selection


@pytest.mark.parametrize("action", [["list"], ["prune", "--all", "--yes"]])
def test_cache_given_a_file_says_it_is_a_file_and_names_its_folder(tmp_path, capsys, action):
    """`cache prune x.h5` said "No cache folder at x.h5" though the file was there."""
    store = _store(tmp_path / "s.h5", ("train", "test"))
    capsys.readouterr()
    assert main(["cache", action[0], str(store.path), *action[1:]]) == 2
    err = capsys.readouterr().err
    assert f"{store.path} is a file, not a cache folder" in err
    assert f"({tmp_path.resolve()} holds this file)" in err and "data/cache" in err
    assert "No cache folder" not in err and len(err.strip().splitlines()) == 1
    assert store.path.exists()


def test_check_help_writes_its_defaults_as_the_other_commands(capsys):
    """check --help wrote "(0.99)", "(4)", "(10)" where every other command writes
    "(default: ...)"."""
    with pytest.raises(SystemExit):
        main(["check", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the help
    for default in ("0.99", "4", "10"):
        assert f"(default: {default})" in text and f" ({default})" not in text
