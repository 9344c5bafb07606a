"""README claims that can go stale without any test failing: the tests its Reliability table
names, the options and pipeline keys it tells users to type, and the Python names it imports."""

from __future__ import annotations

import argparse
import ast
import importlib
import re
import tomllib
from pathlib import Path

from _pytest.mark.expression import Expression

from featpipe.cli import build_parser
from featpipe.pipeline import pipeline_schema

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()

# Options of other programs the README shows beside featpipe's (torchrun, Slurm, ruff,
# benchmark scripts).
OTHER_TOOLS = {
    "--check",
    "--make-jpegs",
    "--max-restarts",
    "--nnodes",
    "--nproc-per-node",
    "--ntasks-per-node",
    "--pillow-too",
    "--rdzv-backend",
    "--rdzv-endpoint",
    "--rdzv-id",
    "--standalone",
}


def _subcommands(parser: argparse.ArgumentParser, prefix: str = ""):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{prefix}{name}", sub
                yield from _subcommands(sub, f"{prefix}{name} ")


def _options() -> dict[str, set[str]]:
    return {
        name: {o for a in sub._actions for o in a.option_strings}
        for name, sub in _subcommands(build_parser())
    }


def _code_blocks(*langs: str) -> list[str]:
    """The README's fenced code blocks in these languages ("" for a bare fence)."""
    blocks, lines, lang = [], None, None
    for line in README.splitlines():
        if line.startswith("```"):
            if lines is None:
                lines, lang = [], line[3:].strip()
            else:
                if lang in langs:
                    blocks.append("\n".join(lines) + "\n")
                lines = None
        elif lines is not None:
            lines.append(line)
    return blocks


def _test_names(path: Path) -> list[str]:
    """What `pytest -k` matches a test by: its function name, its class and the file name."""
    names = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test"):
            names.append([node.name, path.name])
        elif isinstance(node, ast.ClassDef):
            names += [
                [f.name, node.name, path.name]
                for f in node.body
                if isinstance(f, ast.FunctionDef) and f.name.startswith("test")
            ]
    return names


def test_every_test_the_readme_names_exists_and_its_k_selects_one():
    """Each Reliability row ends in `tests/FILE.py -k EXPR`: a renamed test or file leaves the
    row pointing at nothing while the suite still passes."""
    refs = re.findall(r"`(tests/[\w/]+\.py)(?: -k ([^`]+))?`", README)
    assert len(refs) >= 60
    for path, k in refs:
        assert (ROOT / path).is_file(), path
        if not k:
            continue
        expr = Expression.compile(k.strip().strip('"'))
        tests = _test_names(ROOT / path)
        hits = [
            t
            for t in tests
            if expr.evaluate(lambda s, t=t, **_: any(s.lower() in n.lower() for n in t))
        ]
        assert hits, f"{path} -k {k} selects no test"


def test_every_option_the_readme_names_is_featpipes():
    """Every `--option` in the README is one of featpipe's (or of a program it names)."""
    known = set().union(*_options().values())
    flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", README))
    assert flags - known - OTHER_TOOLS == set()


def test_every_readme_command_line_is_accepted_by_its_subcommand():
    """A `featpipe SUB ...` line of the README (a code block or inline) uses only SUB's
    options (`featpipe cache prune --older-than` is not `featpipe cache list`'s)."""
    options = _options()
    lines = "".join(_code_blocks("bash", "")).replace("\\\n", " ").splitlines()
    lines += re.findall(
        r"`(featpipe [^`]+)`", README
    )  # inline: `featpipe probe STORE --run-dir DIR`
    checked = 0
    for command in lines:
        match = re.search(r"(?:^|-m )featpipe (cache \w+|\w+)(.*)", command.strip())
        if not match:
            continue
        sub, rest = match.groups()
        assert sub in options, command
        for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", rest.split("#")[0]):
            assert flag in options[sub], f"{flag} is not an option of featpipe {sub}: {command}"
        checked += 1
    assert checked >= 40


def _schema_keys() -> set[str]:
    schema = pipeline_schema()
    defs = schema.get("$defs", schema.get("definitions", {}))
    keys: set[str] = set()

    def walk(node: dict, path: str) -> None:
        for key, value in node.get("properties", {}).items():
            dotted = f"{path}.{key}" if path else key
            keys.add(dotted)
            if "$ref" in value:
                value = defs[value["$ref"].split("/")[-1]]
            walk(value, dotted)

    walk(schema, "")
    return keys


def test_every_pipeline_key_the_readme_names_exists():
    """Dotted keys (`source.val_fraction`, `features.on_error`) and the keys of the README's
    TOML blocks are keys of pipeline files."""
    keys = _schema_keys()
    named = set(re.findall(r"(?<![\w./-])((?:source|features|probes|finetune)\.[a-z_]+)", README))
    assert {"source.val_fraction", "features.on_error"} <= named
    assert named - keys == set()
    blocks = _code_blocks("toml")
    assert blocks
    for block in blocks:
        for table, values in tomllib.loads(block).items():
            assert {f"{table}.{k}" for k in values} <= keys, block


def test_every_python_name_the_readme_imports_exists():
    """`from featpipe.X import Y` in code blocks and `featpipe.X.Y` in the text resolve."""
    blocks = _code_blocks("python")
    assert len(blocks) >= 8
    names = []
    for block in blocks:
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.ImportFrom) and node.module.startswith("featpipe"):
                names += [(node.module, alias.name) for alias in node.names]
    for dotted in set(re.findall(r"(?<![\w/])featpipe(?:\.[A-Za-z_]\w*)+", README)):
        module, _, name = dotted.rpartition(".")
        names.append((module, name))
    assert len(names) >= 30
    for module, name in names:
        try:
            importlib.import_module(f"{module}.{name}")
        except ModuleNotFoundError:
            assert hasattr(importlib.import_module(module), name), f"{module}.{name}"


def test_every_repository_file_the_readme_names_exists():
    """Paths such as `benchmarks/heads_path.py`, `pipelines/demo.toml`, `.ci/run` and the
    plots the README embeds (a renamed script leaves the README pointing at nothing)."""
    paths = set(
        re.findall(r"`((?:benchmarks|featpipe|docs|pipelines|tests|\.ci)/[\w./-]+)`", README)
    )
    paths |= {f"benchmarks/{name}" for name in re.findall(r"^- `(\w+\.(?:py|sh))`", README, re.M)}
    paths |= set(re.findall(r"\]\((docs/[\w./-]+)\)", README))
    paths |= set(re.findall(r"(?<![\w/])(pipelines/\w+\.toml)", README))
    assert {
        "pipelines/demo.toml",
        "benchmarks/scaling.py",
        "docs/demo-accuracy-vs-cost.png",
    } <= paths
    assert sorted(p for p in paths if not (ROOT / p).exists()) == []
