"""Pipeline configs (schema errors, overrides) and resuming an interrupted `featpipe run`."""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
from pathlib import Path

import pytest
from conftest import make_image_folder

from featpipe.cli import main
from featpipe.errors import ConfigError
from featpipe.finetune import FineTuner
from featpipe.pipeline import config_from_dict, load_config, pipeline_schema
from featpipe.pipeline.config import SET_BY_RUNNER
from featpipe.report import read_results

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"
BASE = {"source": {"data": "digits"}, "features": {"backbones": ["toy"]}}


def with_(**tables):
    raw = json.loads(json.dumps(BASE))
    for name, value in tables.items():
        if isinstance(value, dict):
            raw.setdefault(name, {}).update(value)
        else:
            raw[name] = value
    return raw


def test_defaults_are_filled():
    cfg = config_from_dict(BASE, default_name="x")
    assert cfg.name == "x" and cfg.out == "runs/x"
    assert cfg.probes.heads == ("knn", "linear_svm", "logreg", "mlp", "rbf_svm")
    assert cfg.probes.layers == ("pooled",)
    assert cfg.finetune.modes == () and cfg.finetune.backbones == ("toy",)
    assert cfg.seeds == (0,)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seeds = (1,)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (with_(seed=[0]), r"Unknown key 'seed'\. Did you mean: 'seeds'\?.*Valid keys"),
        (with_(probes={"hedas": ["knn"]}), r"'probes.hedas'\. Did you mean: 'heads'\?"),
        (with_(finetune={"epoch": 2}), r"'finetune.epoch'\. Did you mean: 'epochs'"),
        (with_(finetune={"epochs": "3"}), r"finetune.epochs must be integer; got str '3'"),
        (with_(finetune={"epochs": 2.5}), r"finetune.epochs must be integer"),
        (with_(seeds=[0, True]), r"seeds\[1\] must be integer"),
        (with_(features={"layers": "pooled"}), r"features.layers must be array of strings"),
        (with_(source="digits"), r"source must be a table"),
        (
            with_(probes={"heads": ["logreg", "logeg"]}),
            r"probes.heads\[1\]: unknown head 'logeg'\. Did you mean: 'logreg'.*Valid: knn",
        ),
        (with_(finetune={"modes": ["full", "ful"]}), r"finetune.modes\[1\]: Unknown fine-tuning"),
        (with_(features={"dtype": "float64"}), r"features.dtype: unknown dtype 'float64'"),
        (with_(source={"limits": {"trian": 5}}), r"source.limits.trian: unknown split"),
        (with_(source={"val_fraction": 1.5}), r"source.val_fraction must be in \[0, 1\)"),
        (with_(probes={"layers": ["stage1"]}), r"probes.layers\[0\]: layer 'stage1' is not"),
        (with_(probes={"heads": []}), r"runs no method"),
        (with_(probes={"layers": []}), r"runs no method: probes.layers is empty"),
        (with_(seeds=[0, -1]), r"seeds\[1\] must be >= 0; got -1"),
        (with_(seeds=[1, 0, 1]), r"seeds lists a seed twice: \[1, 0, 1\]"),
        (with_(source={"split_seed": -1}), r"source.split_seed must be >= 0"),
        (with_(probes={"grids": {"logreg": {"C": 1.0}}}), r"probes.grids.logreg.C must be a"),
        (with_(probes={"grids": {"lgoreg": {"C": [1.0]}}}), r"probes.grids.lgoreg: unknown head"),
        ({"features": {"backbones": ["toy"]}}, r"Missing required key 'source.data'"),
    ],
)
def test_config_errors_name_the_key(raw, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict(raw)


def test_overrides_and_cli_paths():
    cfg = config_from_dict(
        BASE,
        [
            "finetune.epochs=2",
            'finetune.modes=["lpft"]',
            "source.limits.train=50",
            "features.cache_dir=/tmp/x y",
        ],
        data="other",
        out="runs/o",
    )
    assert cfg.finetune.epochs == 2 and cfg.finetune.modes == ("lpft",)
    assert cfg.source.limits == {"train": 50}
    assert cfg.features.cache_dir == "/tmp/x y"  # not TOML: taken as a string
    assert cfg.source.data == "other" and cfg.out == "runs/o"
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        config_from_dict(BASE, ["finetune.epochs"])
    with pytest.raises(ConfigError, match=r"Unknown key 'finetune\.epohcs'"):
        config_from_dict(BASE, ["finetune.epohcs=2"])


def test_finetune_defaults_are_finetuners():
    tuner = FineTuner().get_params()
    params = config_from_dict(BASE).finetune.params()
    assert params.keys() == tuner.keys() - set(SET_BY_RUNNER)
    assert params == {k: tuner[k] for k in params}


@pytest.mark.parametrize("name", ["demo", "cifar10_cpu", "cifar10_gpu"])
def test_shipped_pipelines_validate(name):
    cfg = load_config(PIPELINES / f"{name}.toml", data="somewhere")
    assert cfg.name == name
    assert len(cfg.features.layers) >= 1


def _keys(schema: dict, prefix: str = "") -> set[str]:
    keys = set()
    for name, spec in schema.get("properties", {}).items():
        keys.add(prefix + name)
        keys |= _keys(spec, f"{prefix}{name}.")
    return keys


def _check(value, schema: dict, where: str) -> None:
    """A small JSON Schema check: types, enums, required and unknown keys."""
    types = {"integer": int, "number": (int, float), "string": str, "boolean": bool}
    types |= {"object": dict, "array": list}
    options = schema.get("anyOf", [schema])
    assert any(
        isinstance(value, types[o["type"]]) and (o["type"] == "boolean") == isinstance(value, bool)
        for o in options
    ), where
    if "enum" in schema:
        assert value in schema["enum"], where
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            _check(item, schema["items"], f"{where}[{i}]")
    if isinstance(value, dict) and "properties" in schema:
        assert set(schema.get("required", [])) <= value.keys(), where
        for key, item in value.items():
            assert key in schema["properties"], f"{where}.{key}"
            _check(item, schema["properties"][key], f"{where}.{key}")


@pytest.mark.parametrize("name", ["demo", "cifar10_cpu", "cifar10_gpu"])
def test_schema_describes_the_shipped_pipelines(name, capsys):
    assert main(["run", "--schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema == pipeline_schema()
    raw = tomllib.loads((PIPELINES / f"{name}.toml").read_text())
    _check(raw, schema, name)
    assert "finetune.epochs" in _keys(schema)
    assert schema["properties"]["source"]["required"] == ["data"]
    with pytest.raises(AssertionError):  # the check can fail: a misspelt key
        _check({**raw, "seed": [0]}, schema, name)


def test_toml_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


PIPELINE = """
name = "tiny"
seeds = [0]
n_boot = 50
device = "cpu"
[source]
val_fraction = 0.25
test_fraction = 0.25
[features]
backbones = ["toy"]
layers = ["pooled", "stage1"]
batch_size = 16
cache_dir = "{cache}"
[probes]
heads = ["logreg", "knn"]
grids.logreg = {{ C = [0.1, 1.0] }}
[finetune]
modes = ["head"]
epochs = 1
batch_size = 8
"""


@pytest.mark.slow
def test_interrupted_run_resumes_without_recomputing(tmp_path, capsys):
    data = make_image_folder(tmp_path / "images", per_class=8)
    toml = tmp_path / "tiny.toml"
    toml.write_text(PIPELINE.format(cache=tmp_path / "cache"))
    out = tmp_path / "run"
    argv = ["run", str(toml), "--data", str(data), "--out", str(out), "--quiet"]

    assert main(argv) == 0
    first = read_results(out / "results.jsonl")
    methods = [r["method"] for r in first]
    assert methods == [
        "toy/logreg@pooled",
        "toy/knn@pooled",
        "toy/logreg@stage1",
        "toy/knn@stage1",
        "toy/finetune:head",
    ]
    assert (out / "report.html").exists()
    # probes (test ids from the store) and the fine-tune (from the source) are paired
    assert re.search(
        r"fine-tuning \(head\) (beats|trails|is not distinguishable from|is [\d.]+ points "
        r"(ahead of|behind)) logistic regression on layer pooled",
        (out / "report.md").read_text(),
    )
    capsys.readouterr()

    # Simulate a kill during the 4th method: keep 3 rows and half of the 4th line.
    lines = (out / "results.jsonl").read_text().splitlines(keepends=True)
    (out / "results.jsonl").write_text("".join(lines[:3]) + lines[3][:100])
    with pytest.warns(UserWarning, match="partial last line"):
        assert main(argv) == 0
    log = capsys.readouterr().out
    assert log.count("reusing finished") == 3
    for label in (
        "logistic regression on layer pooled",
        "kNN on layer pooled",
        "logistic regression on layer stage1",
    ):
        assert f"reusing finished {label}" in log
    assert "features reused" in log  # the store came from extract's cache

    second = read_results(out / "results.jsonl")
    assert [r["method"] for r in second] == methods
    assert [r["created"] for r in second[:3]] == [r["created"] for r in first[:3]]
    assert second[3]["cost"]["extraction_reused"] is True
    assert second[3]["cost"]["extraction_seconds"] == first[0]["cost"]["extraction_seconds"]

    # Nothing left to do: everything is reused; a changed setting redoes only its methods.
    assert main(argv) == 0
    assert capsys.readouterr().out.count("reusing finished") == 5
    assert main([*argv, "--set", "finetune.epochs=2"]) == 0
    log = capsys.readouterr().out
    assert log.count("reusing finished") == 4 and "fine-tuning (head), seed 0" in log
    assert len(read_results(out / "results.jsonl")) == 6  # the old fine-tune row stays...
    assert "| fine-tuning (head) | 0 |" in (out / "report.md").read_text()  # ...unreported

    row = second[0]
    assert row["provenance"]["backbone"]["spec"] == "toy"
    assert row["cost"]["trainable_params"] > 0
    assert second[-1]["history"] and second[-1]["cost"]["trainable_params"] > 0


def test_a_rank_that_plans_other_method_runs_than_rank_0_is_refused(tmp_path, monkeypatch):
    # A rank whose config differed (another --set) kept only the jobs it also planned and
    # returned, while rank 0 waited for it in each DDP fine-tune until the group's timeout.
    import contextlib

    from featpipe.distributed.ranks import Ranks
    from featpipe.pipeline import runner

    data = make_image_folder(tmp_path / "images", per_class=4)
    toml = tmp_path / "tiny.toml"
    toml.write_text(PIPELINE.format(cache=tmp_path / "cache"))
    cfg = load_config(toml, data=str(data), out=str(tmp_path / "run"))
    monkeypatch.setattr(runner, "current_ranks", lambda: Ranks(rank=1, world_size=2))
    monkeypatch.setattr(runner, "job_store", lambda device: contextlib.nullcontext({}))
    planned = runner.PipelineRunner(cfg, progress=False, log=lambda _: None)
    context, jobs, _, _ = planned._prepare(write=False)
    fingerprint = context.provenance["source"]["fingerprint"]
    message = {"fingerprint": fingerprint, "todo": [j.key for j in jobs] + ["toy/other@pooled"]}
    monkeypatch.setattr(runner, "receive", lambda kv, key: message)
    with pytest.raises(ConfigError, match=r"Rank 1 plans other method runs than rank 0: 1 of"):
        planned.run()
