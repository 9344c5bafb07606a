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
        (["probe"], "the following arguments are required: STORE"),
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


def test_an_unreadable_image_names_the_flag_on_the_command_line_and_the_parameter_in_python(
    image_folder, tmp_path, capsys
):
    """The hint said '--on-error skip (on_error="skip", features.on_error = "skip" in a
    pipeline)' to everyone: Python wording on the command line, a flag in Python."""
    import featpipe
    from featpipe.errors import ImageReadError

    broken = image_folder / "cat" / "001.jpg"
    broken.write_bytes(broken.read_bytes()[:300])  # truncated
    out = tmp_path / "s.h5"
    argv = ["extract", str(image_folder), "--backbone", "toy", "--workers", "0", "--out", str(out)]
    err = _error([*argv, "--device", "cpu", "--no-progress"], capsys)
    assert "pass --on-error skip." in err and "on_error" not in err
    with pytest.raises(ImageReadError) as caught:
        featpipe.extract(str(image_folder), "toy", out=out, device="cpu", workers=0, progress=False)
    assert 'pass on_error="skip".' in str(caught.value) and "--on-error" not in str(caught.value)


def test_a_head_mismatch_is_said_in_words(tmp_path):
    """A head on another layer said "it holds ['pooled', 'stage1']" and another image size
    "preprocessing: head {'crop': 64, 'resize': 73}, ...": Python's list and dict forms."""
    import numpy as np

    import featpipe
    from featpipe.errors import HeadMismatchError
    from featpipe.heads import check_head_matches, load_head

    images = np.random.default_rng(0).integers(0, 256, (10, 40, 30, 3), dtype=np.uint8)

    def store(name: str, size: int):
        source = featpipe.ArraySource(images, np.arange(10) % 2)
        kw = {"device": "cpu", "workers": 0, "progress": False, "image_size": size}
        return featpipe.extract(source, "toy", ["pooled", "stage1"], out=tmp_path / name, **kw)

    small, large = store("small.h5", 32), store("large.h5", 48)
    assert main(["probe", str(small.path), "--layer", "pooled", "--heads", "knn", "--cv", "2",
                 "--save-dir", str(tmp_path / "h")]) == 0  # fmt: skip
    _, sidecar = load_head(tmp_path / "h" / "knn.skops")
    with pytest.raises(HeadMismatchError) as caught:
        check_head_matches({**sidecar, "layer": "stage2"}, small, "stage2")
    assert "not in the store (it holds pooled, stage1)" in str(caught.value)
    with pytest.raises(HeadMismatchError) as caught:
        check_head_matches(sidecar, large, "pooled")
    said = str(caught.value)
    assert "backbone preprocessing crop: head 32, store 48" in said
    assert "{" not in said and "[" not in said


def test_the_commands_a_report_names_are_code_in_report_md():
    """report.md read 'Checks on the data (also \\`featpipe check STORE\\`):': the report's
    own code span was escaped as if it were data, so it showed its backticks."""
    from featpipe.report.content import Document, Section, Table
    from featpipe.report.markdown import render_markdown

    said = "Checks on the data (also `featpipe check STORE`):"
    table = Table(["class"], [["`featpipe x|y`"], ["*b*"]])  # classes from users' data
    md = render_markdown(Document("r", [Section("Data checks", [said, ["`a` run"], table])]))
    assert said in md.splitlines()
    assert "- \\`a\\` run" in md
    assert "| \\`featpipe x\\|y\\` |" in md and "| \\*b\\* |" in md
