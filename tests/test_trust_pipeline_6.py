"""`featpipe run` re-runs and config mistakes: a resumed fine-tune leaves out the images an
uninterrupted run does, a report of an earlier configuration does not outlive a stopped re-run,
and paths (empty, ~, $VAR), values of the wrong type and unreadable pipeline files get one
line naming the key and the fix."""

from __future__ import annotations

import pytest
from test_run_plan import PIPELINE
from test_trust_skips_3 import _skipping_pipeline, folder, nan_on_white  # noqa: F401

from featpipe.errors import ConfigError
from featpipe.pipeline import config_from_dict, run_pipeline
from featpipe.report import read_results

FINETUNE = {"modes": ["head"], "epochs": 1, "batch_size": 8, "workers": 0}


def test_a_resumed_fine_tune_leaves_out_the_images_the_stores_skip(
    nan_on_white,  # noqa: F811
    folder,  # noqa: F811
    tmp_path,
):
    # Before: a re-run whose probes were all finished opened no store, so fine-tuning found
    # only unreadable images and trained on the two with NaN features ("proba must be
    # finite", or other test images than the probes' and an uninterrupted run's).
    run_pipeline(_skipping_pipeline(folder, tmp_path, {"modes": []}), progress=False,
                 log=lambda _: None)  # fmt: skip
    said: list[str] = []
    run_pipeline(_skipping_pipeline(folder, tmp_path, FINETUNE), progress=False, log=said.append)
    assert "fine-tuning leaves out 2 images with non-finite features" in said
    probe, tuned = read_results(tmp_path / "run" / "results.jsonl")
    assert tuned["provenance"]["skipped"] == probe["provenance"]["skipped"]
    assert tuned["test"]["ids_sha256"] == probe["test"]["ids_sha256"]


@pytest.mark.parametrize(
    ("argv", "key"),
    [
        (["--set", "features.cache_dir="], "features.cache_dir"),  # stores in the working folder
        (["--set", "features.cache_dir=' '"], "features.cache_dir"),
        (["--out", ""], "out"),  # ran into runs/<name>, the folder --out was to replace
    ],
)
def test_a_folder_left_empty_is_refused_naming_the_key(tmp_path, capsys, monkeypatch, argv, key):
    # Before: accepted, as an unset variable leaves it (--out "$OUT"): "" is the working folder.
    from featpipe.cli import main

    monkeypatch.chdir(tmp_path)
    toml = tmp_path / "t.toml"
    toml.write_text(PIPELINE.replace("CACHE", str(tmp_path / "cache")))
    assert main(["run", str(toml), "--quiet", *argv]) == 2
    err = capsys.readouterr().err
    assert f"{key} is empty; give a folder" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == [toml]


def test_home_and_variables_in_paths_are_expanded(tmp_path, monkeypatch):
    # Before: read literally, so a run made folders named '~' and '$RUNS' in the working
    # folder (and source.data = "$DATA" did not exist).
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("DATA", "digits")
    raw = {"source": {"data": "$DATA"}, "features": {"backbones": ["toy"]}}
    config = config_from_dict(raw, ["features.cache_dir='~/cache'", "out='${RUNS}/a'"])
    assert config.features.cache_dir == str(tmp_path / "home" / "cache")
    assert config.out == str(tmp_path / "runs" / "a")
    assert config.source.data == "digits"
    with pytest.raises(ConfigError, match=r"^out = '\$NOT_SET/a': environment variable \$NOT_SET"):
        config_from_dict(raw, out="$NOT_SET/a")
    (tmp_path / "$NOT_SET").mkdir()  # a folder of that very name is what it names
    assert config_from_dict(raw, out=f"{tmp_path}/$NOT_SET").out == f"{tmp_path}/$NOT_SET"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ('finetune.lr="0.1"', "lr must be float; got str '0.1'. Write it without quotes: 0.1."),
        ('features.compile="true"', "got str 'true'. Write it without quotes: true."),
        ('seeds=["0", "1"]', "seeds[0] must be integer; got '0'. Write it without quotes: 0."),
        ("seeds=0,1", "of integers; got str '0,1'. Write an array: seeds = [0, 1]."),
        ("source.train_sizes=100", "Write an array: source.train_sizes = [100]."),
        ("probes.heads=logreg", 'Write an array: probes.heads = ["logreg"].'),
    ],
)  # fmt: skip
def test_a_value_of_the_wrong_type_says_how_to_write_it(override, message):
    # Before: what was received and the type, not how to write it (a number in quotes, or
    # one value or --set seeds=0,1 where an array is needed).
    raw = {"source": {"data": "digits"}, "features": {"backbones": ["toy"]}}
    with pytest.raises(ConfigError) as caught:
        config_from_dict(raw, [override])
    assert str(caught.value).endswith(message)


def test_a_pipeline_file_that_is_a_folder_or_not_utf8_is_one_line(tmp_path, capsys):
    # Before: IsADirectoryError (`featpipe run pipelines/`) and UnicodeDecodeError tracebacks.
    from featpipe.cli import main

    (tmp_path / "latin1.toml").write_bytes('name = "café"\n'.encode("latin-1"))
    assert main(["run", str(tmp_path / "latin1.toml")]) == 2
    assert "latin1.toml is not UTF-8 text (byte 11: b'\\xe9'); TOML files are UTF-8" in (
        capsys.readouterr().err
    )
    assert main(["run", str(tmp_path)]) == 2
    assert f"Pipeline file {str(tmp_path)!r} is a folder" in capsys.readouterr().err


def test_a_re_run_of_another_configuration_stopped_early_leaves_no_report_of_the_old_one(
    tmp_path, monkeypatch, capsys
):
    # Before: report.md still recommended the old grid's kNN (n_neighbors=1) beside a
    # plan.json and config.json of the new one, which had no finished row.
    import featpipe.heads
    from featpipe.cli import main

    toml = tmp_path / "t.toml"
    toml.write_text(PIPELINE.replace("CACHE", str(tmp_path / "cache")))
    out = tmp_path / "run"
    small = ["--set", "source.limits={train=60, val=30, test=30}", "--set", "n_boot=40"]

    def run(grid: str, *heads: str) -> int:
        argv = ["run", str(toml), "--out", str(out), "--quiet", *small]
        sets = [f"probes.grids.knn={{n_neighbors=[{grid}]}}", f"probes.heads={['knn', *heads]}"]
        return main([*argv, *(arg for s in sets for arg in ("--set", s))])

    assert run("1") == 0
    fit = featpipe.heads.select_and_fit

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(featpipe.heads, "select_and_fit", stop)
    assert run("1", "logreg") == 130  # a head added: the report's kNN row is still current
    assert (out / "report.md").exists()
    assert run("15") == 130
    assert not (out / "report.md").exists() and not (out / "report.html").exists()
    assert "removed the report of an earlier configuration" in capsys.readouterr().out
    monkeypatch.setattr(featpipe.heads, "select_and_fit", fit)
    assert run("15") == 0
    assert "n_neighbors=15" in (out / "report.md").read_text()


def test_a_cache_dir_lp_ft_alone_cannot_write_fails_before_any_compute(tmp_path, capsys):
    # Before: checked only when probes ran; LP-FT's probe, which reads the store, failed at
    # extraction after config.json and plan.json were written, naming a --cache-dir option.
    from featpipe.cli import main

    toml = tmp_path / "t.toml"
    toml.write_text(PIPELINE.replace("CACHE", str(tmp_path / "taken" / "cache")))
    (tmp_path / "taken").write_text("a file, not a folder")
    sets = ["probes.heads=[]", 'finetune.modes=["lpft"]', "finetune.epochs=1"]
    argv = ["run", str(toml), "--out", str(tmp_path / "run"), "--quiet"]
    assert main([*argv, *(arg for s in sets for arg in ("--set", s))]) == 2
    assert "features.cache_dir = " in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
