"""Pipeline and CLI trust checks, session 15: a data-size sweep's subsets that leave classes
out, and each rank's last line written at once."""

from __future__ import annotations

import warnings

import pytest
import toy_backbone  # noqa: F401  (registers the 'toy' backbone)
from conftest import WriteRecorder

from featpipe import cli
from featpipe.errors import ConfigError
from featpipe.pipeline import config_from_dict
from featpipe.pipeline.runner import open_pipeline_source
from featpipe.pipeline.validate import check_sizes


def _config(tmp_path, sizes, heads=("knn",), **source):
    return config_from_dict(
        {
            "name": "fifteen",
            "out": str(tmp_path / "run"),
            "device": "cpu",
            "source": {
                "data": "digits",
                "limits": {"train": 60, "val": 20, "test": 20},
                "train_sizes": sizes,
                **source,
            },
            "features": {"backbones": ["toy"], "image_size": 16, "cache_dir": str(tmp_path)},
            "probes": {"heads": list(heads)},
        }
    )


def _check(config) -> list[str]:
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        check_sizes(config, open_pipeline_source(config.source))
    return [str(w.message) for w in said]


def test_a_sweep_size_below_the_class_count_warns_at_the_check(tmp_path):
    # Before: the subset of 5 of digits' 10 classes trained heads that cannot predict the
    # other 5, whose test images all count as errors, and nothing said so.
    said = _check(_config(tmp_path, [5, 8, 60]))
    assert len(said) == 1, said
    assert "\n" not in said[0]
    assert said[0].startswith("source.train_sizes [5, 8]: ")
    assert "10 classes" in said[0] and "Use larger sizes (at least 10" in said[0]


def test_a_sweep_whose_subsets_hold_every_class_does_not_warn(tmp_path):
    assert _check(_config(tmp_path, [10, 30, 60])) == []


def _one_write(monkeypatch, run) -> str:
    stream = WriteRecorder()
    monkeypatch.setattr("sys.stderr", stream)
    run()
    assert len(stream.calls) == 1 and stream.calls[0].endswith("\n"), stream.calls
    assert stream.calls[0].count("\n") == 1
    return stream.calls[0]


def test_a_commands_error_is_one_write_with_its_newline(monkeypatch, tmp_path):
    # Under torchrun's `python -u` print wrote the text and its newline apart, so in the
    # ranks' shared log another rank's error could land between them (two on one line).
    line = _one_write(monkeypatch, lambda: cli.main(["info", str(tmp_path / "none.h5")]))
    assert line.startswith("featpipe info: error: ")


def test_an_interrupted_command_says_so_in_one_write(monkeypatch):
    def stopped(args):
        raise KeyboardInterrupt

    build = cli.build_parser

    def parser():
        p = build()
        p.set_defaults(func=stopped, command="probe")
        return p

    monkeypatch.setattr(cli, "build_parser", parser)
    line = _one_write(monkeypatch, lambda: cli.main([]))
    assert line.startswith("featpipe probe: ")


def test_the_refusal_of_a_streamed_head_without_val_is_one_grammatical_sentence(tmp_path):
    # Before: "logreg_stream reads the feature store chunk by chunk and choose parameters".
    config = _config(tmp_path, [], ["logreg_stream"], val_fraction=0.0)
    with pytest.raises(ConfigError, match="reads the feature store chunk by chunk and chooses "):
        check_sizes(config, open_pipeline_source(config.source))
