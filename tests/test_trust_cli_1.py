"""A new user's first hour with the ``featpipe`` command: common mistakes are one line naming
the fix, and Ctrl-C keeps what was finished."""

from __future__ import annotations

import json

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
    assert said in err and f"`featpipe {argv[0]} --help` lists the options" in err
    assert len(err.strip().splitlines()) == 1  # the usage is not printed first


def test_predict_given_a_store_as_its_head_says_the_order(chunked, capsys):
    assert main(["predict", str(chunked), str(chunked)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"got the feature store {chunked} as HEAD" in err
    assert "featpipe predict HEAD STORE" in err


def test_predict_given_a_folder_as_its_head_names_the_heads_in_it(chunked, tmp_path, capsys):
    main(["probe", str(chunked), "--heads", "knn", "--save-dir", str(tmp_path / "heads")])
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "heads"), str(chunked)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "is a folder" in err and "knn.skops" in err


def test_extract_layers_joined_by_commas_are_refused_naming_spaces(tmp_path, capsys):
    argv = ["extract", "digits", "--backbone", "toy", "--layers", "pooled,stage1:max"]
    assert main([*argv, "--out", str(tmp_path / "x.h5")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--layers pooled stage1:max" in err and not (tmp_path / "x.h5").exists()


def test_ctrl_c_during_a_later_head_keeps_the_finished_heads_rows(
    chunked, tmp_path, monkeypatch, capsys
):
    import featpipe.heads

    fit = featpipe.heads.select_and_fit

    def interrupted_at_mlp(name, *args, **kwargs):
        if name == "mlp":
            raise KeyboardInterrupt
        return fit(name, *args, **kwargs)

    monkeypatch.setattr(featpipe.heads, "select_and_fit", interrupted_at_mlp)
    run_dir = tmp_path / "run"
    argv = ["probe", str(chunked), "--heads", "knn,mlp", "--run-dir", str(run_dir)]
    assert main(argv) == 130
    err = capsys.readouterr().err
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert [r["method"].split("/")[-1] for r in rows] == ["knn@pooled"]  # the finished head
    assert "interrupted while fitting mlp; finished: knn" in err and str(run_dir) in err


MY_COMMANDS = ("extract", "info", "consolidate", "probe", "predict", "finetune", "run", "report")


@pytest.mark.parametrize("command", MY_COMMANDS)
def test_help_fits_a_100_column_terminal(command, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit):
        main([command, "--help"])
    lines = capsys.readouterr().out.splitlines()
    # descriptions were one unwrapped line of up to 142 characters
    assert max(len(line) for line in lines) <= 100, max(lines, key=len)
    assert any(line.startswith("examples:") for line in lines)


@pytest.mark.parametrize(
    ("command", "said"),
    [
        ("extract", "as val when the source has no val split (default: 0; digits: 0.2)"),
        ("extract", "seed of splits and subsampling (default: 0)"),
        ("probe", "CV folds and few-shot draws (default: 0)"),
        ("probe", "(default: the table on standard output only)"),
    ],
)
def test_help_shows_the_defaults_of_splits_seeds_and_outputs(command, said, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert said in " ".join(capsys.readouterr().out.split())


def test_an_out_file_that_is_an_input_is_refused_before_it_is_overwritten(
    chunked, tmp_path, capsys
):
    """--out naming the store (or the head) replaced it with the results: the store lost."""
    before = chunked.read_bytes()
    heads = tmp_path / "heads"
    assert main(["probe", str(chunked), "--heads", "knn", "--out", str(chunked)]) == 2
    assert "is the feature store this command reads" in capsys.readouterr().err
    main(["probe", str(chunked), "--heads", "knn", "--save-dir", str(heads)])
    capsys.readouterr()
    head = heads / "knn.skops"
    saved = head.read_bytes()
    for out in (chunked, head, heads / "knn.skops.json"):
        assert main(["predict", str(head), str(chunked), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"--out {out} is the " in err
    assert chunked.read_bytes() == before and head.read_bytes() == saved


def test_extract_refuses_an_out_file_that_is_its_source_manifest(
    split_image_folder, tmp_path, capsys
):
    """--out manifest.csv was 'not a readable featpipe store ... run again with --overwrite',
    and --overwrite replaced the manifest with the store."""
    manifest = tmp_path / "m.csv"
    rows = [f"{p},{p.parent.name}" for p in sorted(split_image_folder.rglob("*.jpg"))]
    manifest.write_text("path,label\n" + "\n".join(rows) + "\n")
    before = manifest.read_bytes()
    argv = ["extract", str(manifest), "--backbone", "toy", "--workers", "0", "--no-progress"]
    assert main([*argv, "--out", str(manifest), "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--out {manifest} is the image source" in err
    assert manifest.read_bytes() == before
