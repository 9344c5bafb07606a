"""A saved head is tied to the library versions that saved it: load_head compares those its
sidecar records with the installed ones, in one line naming both and the fix."""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np
import pytest
import sklearn.base
from sklearn.exceptions import InconsistentVersionWarning
from sklearn.linear_model import LogisticRegression

from featpipe.errors import ConfigError
from featpipe.heads import load_head, save_head
from featpipe.heads.persistence import sidecar_path

X = np.random.default_rng(0).normal(size=(20, 4))
Y = np.arange(20) % 2


def _saved_by(path, **saved_versions) -> None:
    """Make the sidecar of ``path`` say the head was saved with ``saved_versions``."""
    side = json.loads(sidecar_path(path).read_text())
    side["versions"].update({k.replace("_", "-"): v for k, v in saved_versions.items()})
    sidecar_path(path).write_text(json.dumps(side))


def _loaded(path) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_head(path)
    return [w for w in caught if "arbitrary code" not in str(w.message)]  # joblib's note


def test_a_head_saved_by_another_scikit_learn_warns_naming_both_versions(tmp_path):
    """A head saved by scikit-learn 1.2.0 loaded without a word (a .skops file: scikit-learn
    says nothing either), though it may predict otherwise under another scikit-learn."""
    pytest.importorskip("skops")
    path = save_head(LogisticRegression().fit(X, Y), tmp_path / "h.skops")
    assert _loaded(path) == []  # the same versions: nothing said
    _saved_by(path, scikit_learn="1.2.0", featpipe="0.0.1")
    (said,) = _loaded(path)
    text = str(said.message)
    assert "\n" not in text
    here = sklearn.__version__
    assert f"scikit-learn 1.2.0 (here {here})" in text and "featpipe 0.0.1 (here " in text
    assert "pip install scikit-learn==1.2.0 featpipe==0.0.1" in text and "--save-dir" in text


def test_scikit_learns_own_version_warning_is_not_said_again(tmp_path, monkeypatch):
    """A joblib head pickled by another scikit-learn gave scikit-learn's several-line
    InconsistentVersionWarning and nothing of featpipe's: now featpipe's one line only."""
    monkeypatch.setattr(sklearn.base, "__version__", "1.2.0")  # what the pickle records
    path = save_head(LogisticRegression().fit(X, Y), tmp_path / "h.joblib")
    monkeypatch.undo()
    _saved_by(path, scikit_learn="1.2.0")
    caught = _loaded(path)
    assert not [w for w in caught if issubclass(w.category, InconsistentVersionWarning)]
    assert len(caught) == 1 and "scikit-learn 1.2.0 (here " in str(caught[0].message)


def test_a_head_whose_class_this_version_lacks_is_one_line_naming_the_versions(tmp_path):
    """A head of a class that the installed featpipe does not have (saved by another version)
    was a ModuleNotFoundError traceback; with the versions it is one line naming them."""
    (tmp_path / "gone_head_module.py").write_text(
        "from sklearn.linear_model import LogisticRegression\n"
        "class GoneHead(LogisticRegression):\n    pass\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        import gone_head_module

        path = save_head(gone_head_module.GoneHead().fit(X, Y), tmp_path / "h.joblib")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("gone_head_module", None)
    (tmp_path / "gone_head_module.py").unlink()
    _saved_by(path, featpipe="9.0.0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ConfigError, match=r"featpipe 9\.0\.0 \(here .*cannot be loaded"):
            load_head(path)
