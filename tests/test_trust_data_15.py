"""Trust sweep of the data sources (session 15): a val/test carve that followed the rows' order,
and manifest paths that differ only in case on a file system that does not tell case apart."""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featpipe.data import ArraySource, CSVSource, load_builtin
from featpipe.data.splits import stratified_split
from featpipe.errors import SourceError


def _carved(source) -> tuple[set[str], set[str]]:
    return tuple({source.ids[r] for r in source.indices(split)} for split in ("val", "test"))


def _write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("path,label\n" + "".join(f"{p},{c}\n" for p, c in rows))
    return path


# -- the carve and the rows' order -----------------------------------------------------------


def test_the_same_images_listed_in_another_order_carve_the_same_val_and_test(tmp_path):
    # the carve drew each class's rows by their positions: a manifest sorted another way (or
    # rows appended) gave other val and test images, so two runs on one data set compared
    # different test sets
    rows = []
    for c in "ab":
        for i in range(10):
            Image.new("L", (4, 4), i * 20).save(tmp_path / f"{c}{i}.png")
            rows.append((f"{c}{i}.png", c))
    orders = [rows, rows[::-1], rows[1::2] + rows[::2]]
    carves = [
        _carved(
            CSVSource(_write_csv(tmp_path / f"{n}.csv", r), val_fraction=0.2, test_fraction=0.2)
        )
        for n, r in enumerate(orders)
    ]
    assert all(len(val) == 4 and len(test) == 4 for val, test in carves)
    assert carves[1] == carves[0] and carves[2] == carves[0]

    images = np.arange(20, dtype=np.uint8).repeat(16).reshape(20, 4, 4)
    labels, ids = np.repeat([0, 1], 10), [f"img{i:02d}" for i in range(20)]
    shuffled = np.random.default_rng(3).permutation(20)
    kept, moved = (
        ArraySource(images[o], labels[o], ids=[ids[i] for i in o], val_fraction=0.3)
        for o in (np.arange(20), shuffled)
    )
    assert _carved(kept) == _carved(moved)


def test_rows_in_id_order_carve_as_before():
    # image folders list their rows sorted by id, and ArraySource's default ids are in row
    # order: their carves (the README demo's among them) are the ones drawn before ids counted
    labels = np.random.default_rng(0).integers(0, 4, 101)
    ids = [f"x/{i:04d}" for i in range(101)]
    for seed in (0, 1, 7):
        assert np.array_equal(
            stratified_split(labels, 0.2, 0.15, seed, ids=ids),
            stratified_split(labels, 0.2, 0.15, seed),
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        demo = load_builtin("digits", val_fraction=0.2, test_fraction=0.2, seed=0)
    assert hashlib.sha256(demo.splits.tobytes()).hexdigest()[:12] == "f6776238bf38"


# -- paths that differ only in case ----------------------------------------------------------


def _case_blind(monkeypatch) -> None:
    """This file system as macOS's or Windows' sees it: a name opens the file whose name is
    the same in lower case (the tests write both, as two files)."""
    stat, lstat = os.stat, os.lstat

    def folded(path):
        folder, name = os.path.split(os.fspath(path))
        return os.path.join(folder, name.lower())

    monkeypatch.setattr(os, "stat", lambda path, *a, **k: stat(folded(path), *a, **k))
    monkeypatch.setattr(os, "lstat", lambda path, *a, **k: lstat(folded(path), *a, **k))


def test_manifest_paths_that_differ_only_in_case_are_one_image_where_case_is_not_told_apart(
    tmp_path, monkeypatch
):
    # on macOS 'cat/a.png' and 'cat/A.png' open one file, yet each row was kept: one image in
    # two rows could land in train and in test (or under two labels), which no check told
    for name in ("a.png", "A.png", "b.png", "c.png", "d.png"):
        Image.new("L", (4, 4), ord(name[0])).save(tmp_path / name)
    rows = [("a.png", "x"), ("b.png", "x"), ("c.png", "y"), ("A.png", "y"), ("d.png", "y")]
    manifest = _write_csv(tmp_path / "m.csv", rows)
    assert len(CSVSource(manifest)) == 5  # a file system that tells case apart: five images
    _case_blind(monkeypatch)
    with pytest.raises(
        SourceError,
        match=r"line 5: path 'A.png' is the same image as line 2 \('a.png'\): their paths differ "
        r"only in case, which this file system does not tell apart",
    ):
        CSVSource(manifest)


def test_a_manifest_path_in_another_case_than_its_file_names_the_file(tmp_path):
    # a manifest written on macOS (where 'cat/A.png' opens 'cat/a.png') listed a missing file
    # here, with nothing to say that the file is there under another case
    (tmp_path / "cat").mkdir()
    for name in ("cat/a.png", "b.png"):
        Image.new("L", (4, 4), 9).save(tmp_path / name)
    manifest = _write_csv(tmp_path / "m.csv", [("cat/A.png", "x"), ("b.png", "y")])
    with pytest.raises(SourceError, match=r"1 missing file.*'[^']*cat/a.png' exists, its name "):
        CSVSource(manifest)
