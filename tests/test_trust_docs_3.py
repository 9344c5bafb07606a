"""The feature store's layout is written down twice, in featpipe/store/schema.py's docstring and
in the README (users read it on GitHub): the two blocks must be the same text, and that text must
name what a store that featpipe writes holds (attributes, datasets, dtypes, shapes, chunks)."""

from __future__ import annotations

import ast
import json
import re
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import make_image_folder

import featpipe
from featpipe.extract.inference import PRECISIONS
from featpipe.store import schema
from featpipe.store.writer import write_arrays

ROOT = Path(__file__).resolve().parent.parent


def _readme_block() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### The feature store (HDF5") :]
    start = section.index("```\n") + 4
    return textwrap.dedent(section[start : section.index("```\n", start)])


def _schema_block() -> str:
    source = (ROOT / "featpipe" / "store" / "schema.py").read_text()
    doc = ast.get_docstring(ast.parse(source), clean=False)
    start = doc.index("::\n\n") + 4
    return textwrap.dedent(doc[start : doc.index("\n\n", start)] + "\n")


def _attrs_text(block: str) -> str:
    """The root line's text after 'attrs:', its continuation lines joined."""
    root = block.split("\n/samples", 1)[0]
    return " ".join(root.split("attrs:", 1)[1].split())


def _top_level_names(text: str) -> set[str]:
    """The names an attribute list gives at depth 0: 'a, b (JSON: x, y), c="v"' -> {a, b, c}."""
    depth, flat = 0, []
    for char in text:
        depth += char == "("
        if depth == 0:
            flat.append(char)
        depth -= char == ")"
    names = set()
    for item in re.split(r"[,;]", "".join(flat)):
        match = re.match(r"\s*(\w+)", item)
        if match:
            names.add(match.group(1))
    return names


def _datasets(block: str) -> dict[str, str]:
    """{path: its line's text, continuation lines joined} for every dataset line."""
    out, path = {}, None
    for line in block.splitlines():
        match = re.match(r"/(\S+)\s+(.*)", line)
        if match and not line.startswith("/ "):
            path = match.group(1)
            out[path] = match.group(2)
        elif path and line.startswith(" "):
            out[path] += " " + line.strip()
        else:
            path = None
    return out


@pytest.fixture(scope="module")
def extracted(tmp_path_factory) -> Path:
    """A store featpipe extracted (toy backbone, every root attribute an extraction writes)."""
    tmp = tmp_path_factory.mktemp("docs3")
    root = make_image_folder(tmp / "imgs", per_class=4, splits=("train", "val"))
    out = tmp / "s.h5"
    featpipe.extract(
        str(root),
        "toy",
        out=out,
        dtype="float32",
        chunk_rows=5,
        batch_size=4,
        progress=False,
        workers=0,
    )
    return out


def test_schema_and_readme_give_the_same_layout():
    """README said chunked (rows_per_chunk, D) and precision fp64, schema.py said chunked
    (min(rows_per_chunk, N), D) and no fp64: two copies that drifted apart."""
    assert _schema_block() == _readme_block()


def test_layout_names_every_root_attribute_of_an_extracted_store(extracted):
    attrs_text = _attrs_text(_readme_block())
    listed = _top_level_names(attrs_text)
    with h5py.File(extracted, "r") as f:
        assert set(f.attrs) == listed
        assert f.attrs["format"] == schema.FORMAT
        assert f"format_version={f.attrs['format_version']}" in attrs_text
        assert f'format="{f.attrs["format"]}"' in attrs_text
        # the keys of the JSON attributes that the layout spells out
        extraction = json.loads(f.attrs["extraction"])
        backbone = json.loads(f.attrs["backbone"])
        compute = json.loads(f.attrs["compute"])
    for key in [*extraction, *extraction["runs"][0], *backbone, *compute]:
        assert re.search(rf"\b{key}\b", attrs_text), key


def test_layout_gives_the_precision_and_decode_values_the_code_writes():
    attrs_text = _attrs_text(_readme_block())
    precision = re.search(r"precision ([^;]*);", attrs_text).group(1)
    assert set(re.findall(r'"(\w+)"', precision)) == set(PRECISIONS.values())
    decode = re.search(r"decode ([^;]*);", attrs_text).group(1)
    assert set(re.findall(r'"(\w+)"', decode)) == {"pil", "nvjpeg"}


def _symbols(f: h5py.File, dim: int) -> dict[str, int]:
    return {
        "N": len(f[schema.SAMPLES_LABEL]),
        "C": len(f[schema.CLASSES]),
        "D": dim,
        "n_chunks": int(f.attrs["n_chunks"]),
        "rows_per_chunk": int(f.attrs["rows_per_chunk"]),
    }


def _dataset_names(f: h5py.File) -> set[str]:
    names: set[str] = set()
    f.visititems(lambda name, o: names.add(name) if isinstance(o, h5py.Dataset) else None)
    return names


def _dtype_word(dataset: h5py.Dataset) -> str:
    return "utf-8" if h5py.check_string_dtype(dataset.dtype) else dataset.dtype.name


@pytest.mark.parametrize("rows_per_chunk", [4, 64])
def test_layout_gives_each_datasets_shape_dtype_and_chunks(tmp_path, extracted, rows_per_chunk):
    """Checked on an extracted store and on two written from arrays: chunks shorter than the
    store (4 of 10 rows) and a store shorter than its rows_per_chunk (64 > 10 rows), where the
    features are chunked (N, D), not (rows_per_chunk, D)."""
    x = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    written = tmp_path / "a.h5"
    write_arrays(written, {"pooled": x}, [0, 1] * 5, ["train"] * 10, ["a", "b"], rows_per_chunk=4)
    write_arrays(
        tmp_path / "b.h5",
        {"pooled": x},
        [0, 1] * 5,
        ["train"] * 10,
        ["a", "b"],
        rows_per_chunk=rows_per_chunk,
        dtype="float16",
    )
    lines = _datasets(_readme_block())
    layer_line = lines.pop("features/<layer>")
    assert all(dtype in layer_line for dtype in schema.DTYPES)
    rule = re.search(r"chunked (\(.*\)), with", layer_line).group(1)
    for path in (extracted, written, tmp_path / "b.h5"):
        with h5py.File(path, "r") as f:
            features = f[schema.FEATURES]
            dim = next(iter(features.values())).shape[1]
            names = {"min": min, **_symbols(f, dim)}
            for layer in features.values():
                assert layer.dtype.name in layer_line
                # the rule as written, "(min(rows_per_chunk, N), D)", with this store's numbers
                assert layer.chunks == eval(rule, {}, names), (path, rule)
                assert layer.fletcher32
                for attr in layer.attrs:
                    assert re.search(rf"attrs: .*\b{attr}\b", layer_line), attr
            found = {n for n in _dataset_names(f) if not n.startswith("features/")}
            assert found == set(lines)
            for name, line in lines.items():
                shape = re.match(r"\(([^)]*)\)", line).group(1)
                expected = tuple(names[s.strip()] for s in shape.split(",") if s.strip())
                assert f[name].shape == expected, (name, line)
                assert _dtype_word(f[name]) in line, (name, line)
            names_attr = list(f[schema.SAMPLES_SPLIT].attrs["names"])
            assert (
                f"names={json.dumps(names_attr, separators=(',', ':'))}"
                in lines[schema.SAMPLES_SPLIT]
            )
