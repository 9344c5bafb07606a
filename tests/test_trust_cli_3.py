"""featpipe predict with a head that never saw one of its store's classes."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from featpipe.cli import main
from featpipe.heads import save_head
from featpipe.store.writer import write_arrays


@pytest.fixture
def head_missing_a_class(tmp_path):
    """(a logreg head saved on a store of classes a, b and c, c having test rows only; the
    store): the head knows a and b."""
    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 6 + [0, 1, 2, 2])
    splits = np.array([0] * 12 + [2] * 4)  # c (2) only in test
    x = rng.normal(size=(16, 4)).astype(np.float32) + labels[:, None]
    store = write_arrays(
        tmp_path / "s.h5",
        {"pooled": x},
        labels,
        splits,
        ["a", "b", "c"],
        ids=[f"img{i}" for i in range(16)],
        attrs={"key": "0123456789abcdef"},
        rows_per_chunk=16,
    )
    X, y = store.arrays("pooled", "train")
    path = tmp_path / "logreg.joblib"
    save_head(LogisticRegression().fit(X, y), path, store=store, layer="pooled")
    return path, store


def test_predict_names_the_classes_its_head_never_saw(head_missing_a_class, capsys):
    """The CSV had probability_a and probability_b and no word on c: a user could not tell
    that the head can never predict c (it had no train rows), nor why its column was missing.
    Zero columns would read as a measured probability, so the columns stay the head's own and
    a warning names the class left out."""
    head, store = head_missing_a_class
    capsys.readouterr()
    with pytest.warns(UserWarning) as warned:
        assert main(["predict", str(head), str(store.path)]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    fields = ["id", "predicted_class", "probability", "probability_a", "probability_b"]
    assert list(rows[0]) == fields
    assert {row["predicted_class"] for row in rows} <= {"a", "b"}
    said = [str(w.message) for w in warned if "never" in str(w.message)]
    assert len(said) == 1, [str(w.message) for w in warned]
    assert "c" in said[0].split("never predicts ")[1] and "2 of the 3 classes" in said[0]


def test_predict_with_a_missing_head_names_the_heads_beside_it(head_missing_a_class, capsys):
    """A mistyped head path said only "No saved head at PATH": not which heads are there,
    nor how to save one."""
    head, store = head_missing_a_class
    capsys.readouterr()
    assert main(["predict", str(head.with_name("logreg.skops")), str(store.path)]) == 2
    err = capsys.readouterr().err
    assert "logreg.joblib" in err and "--save-dir" in err and "Traceback" not in err
