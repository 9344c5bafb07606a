"""Data checks, round 8: what `featpipe check` and the report's checks said clean."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import toy_backbone  # noqa: F401  (registers the 'toy' backbone)
from test_trust_leakage_6 import _pattern

from featpipe.cli import main
from featpipe.data.manifest import CSVSource
from featpipe.evaluate.leakage import DataChecks, check_data, check_source


def _conflicting_source(root: Path) -> CSVSource:
    """Train: 6 patterns, one of them also filed under the other class in train; test: 4 new
    patterns, one of them filed under both classes in test. No image spans two splits."""
    rows = ["path,label,split"]

    def add(seed: int, name: str, split: str, label: str) -> None:
        _pattern(seed).save(root / f"{name}.png")
        rows.append(f"{name}.png,{label},{split}")

    for i in range(6):
        add(i, f"tr{i}", "train", "ab"[i % 2])
    add(0, "tr0_again", "train", "b")  # tr0 is an 'a'
    for i in range(6, 10):
        add(i, f"te{i}", "test", "ab"[i % 2])
    add(6, "te6_again", "test", "b")  # te6 is an 'a'
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    return CSVSource(root / "m.csv")


def test_the_same_image_under_two_labels_in_one_split_is_a_finding(tmp_path):
    # Before: 'No image appears in two splits' and nothing else: a test image filed under two
    # classes caps every method's top-1, and was not mentioned.
    checks = check_source(_conflicting_source(tmp_path))
    assert not checks.duplicates
    assert checks.findings >= 1
    text = " ".join(checks.lines())
    assert "2 images carry more than one label (by content hash" in text
    assert "tr0.png (train, a) = tr0_again.png (train, b)" in text
    assert "te6.png (test, a) = te6_again.png (test, b)" in text
    # The same image under one label twice is no conflict.
    f = np.eye(4, dtype=np.float32)[[0, 0, 1, 2]]
    same = check_data(
        ["x", "y", "z", "w"], np.array([0, 0, 1, 1]), ["train"] * 4, ["a", "b"], features=f
    )
    assert same.conflicts == [] and same.findings == 0


def test_identical_features_under_two_labels_are_a_conflict_and_old_checks_read():
    f = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    f[3] = f[2]
    checks = check_data(
        list("pqrs"),
        np.array([0, 1, 0, 1]),
        ["train", "train", "test", "test"],
        ["a", "b"],
        features=f,
        min_per_class=1,
    )
    assert checks.conflicts == [[["test", "r", "a"], ["test", "s", "b"]]]
    assert "by identical stored features" in checks.lines()[1]
    again = DataChecks.from_json(json.loads(json.dumps(checks.to_json())))
    assert again.conflicts == checks.conflicts
    old = checks.to_json()
    del old["conflicts"]  # checks.json written before label conflicts were looked for
    assert DataChecks.from_json(old).conflicts == []


def test_featpipe_check_exits_1_on_a_label_conflict_and_its_json_names_it(tmp_path, capsys):
    from featpipe import extract

    source = _conflicting_source(tmp_path)
    store = extract(source, "toy", ["pooled"], cache_dir=tmp_path, progress=False, device="cpu")
    args = [
        "check",
        str(store.path),
        "--source",
        str(tmp_path / "m.csv"),
        "--min-per-class",
        "1",
        "--cosine",
        "1",
    ]
    assert main(args) == 1
    assert "carry more than one label" in capsys.readouterr().out
    assert main([*args, "--json"]) == 1
    found = json.loads(capsys.readouterr().out)["conflicts"]
    assert sorted(m[1] for g in found for m in g) == [
        "te6.png",
        "te6_again.png",
        "tr0.png",
        "tr0_again.png",
    ]


def test_a_store_without_test_or_reference_images_is_not_said_to_have_no_near_duplicates():
    # Before: 'No test image has a near-duplicate in train or val (...)' for a store with no
    # test images, or with test images only: nothing was compared.
    f = np.random.default_rng(1).normal(size=(4, 8)).astype(np.float32)
    labels = np.array([0, 1, 0, 1])
    for splits, missing in ((["train"] * 2 + ["val"] * 2, "test"), (["test"] * 4, "train or val")):
        checks = check_data(
            list("pqrs"),
            labels,
            splits,
            ["a", "b"],
            features=f.copy(),
            image_hashes={i: k for k, i in enumerate("pqrs")},
            min_per_class=1,
        )
        text = " ".join(checks.lines())
        assert f"Near-duplicates were not looked for: there are no {missing} images." in text
        assert "No test image has a near-duplicate" not in text


def conflict_line(n: int) -> str:
    """The data check's line for one blank frame filed under each of ``n`` classes."""
    checks = check_data(
        [f"f{k}" for k in range(n)],
        np.arange(n),
        ["train"] * n,
        [f"c{k}" for k in range(n)],
        features=np.zeros((n, 4), np.float32),
    )
    return next(t for t in checks.lines() if "more than one label" in t)


def test_one_image_under_every_class_is_shown_with_a_few_labels():
    line = conflict_line(300)
    assert "f0 (train, c0) = f1 (train, c1)" in line
    assert "and 295 more labels (300 copies)" in line and "c5)" not in line
    assert len(line) < 400


def test_featpipe_check_help_names_the_label_conflict_check(capsys):
    with pytest.raises(SystemExit):
        main(["check", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "the same image under more than one label in any splits" in text
