"""load_head's version warning compares public versions ("2.14.1+cu121" is torch 2.14.1, built
for CUDA 12.1), and torch's only for a head that holds torch objects."""

from __future__ import annotations

import json
import warnings
from importlib.metadata import version

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from featpipe.heads import load_head, save_head
from featpipe.heads.persistence import sidecar_path

X = np.random.default_rng(0).normal(size=(20, 4))
Y = np.arange(20) % 2
TORCH = version("torch").split("+")[0]  # the installed torch's public version


def _saved_with_torch(path, torch_version: str) -> None:
    side = json.loads(sidecar_path(path).read_text())
    side["versions"]["torch"] = torch_version
    sidecar_path(path).write_text(json.dumps(side))


def _said(path) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_head(path)
    return [str(w.message) for w in caught if "arbitrary code" not in str(w.message)]


@pytest.mark.parametrize("local", ["+cu121", "+cpu", ""])
def test_another_build_of_the_same_torch_says_nothing(tmp_path, local):
    """A head saved under torch 2.14.1+cu121 and loaded under 2.14.1 (or the reverse) warned
    and advised pip install torch==2.14.1+cu121, which PyPI does not have."""
    head = LogisticRegression().fit(X, Y)
    head.torch_state_ = torch.zeros(2)  # a head that holds torch objects: torch is checked
    path = save_head(head, tmp_path / "h.joblib")
    _saved_with_torch(path, TORCH + local)
    assert _said(path) == []


def test_torch_is_checked_only_for_a_head_that_holds_torch_objects(tmp_path):
    """A scikit-learn LogisticRegression does not use torch (nor do featpipe's heads: fitted in
    torch, they keep and predict with numpy arrays), yet another torch warned of it."""
    path = save_head(LogisticRegression().fit(X, Y), tmp_path / "plain.joblib")
    _saved_with_torch(path, "2.3.0+cu121")
    assert _said(path) == []

    head = LogisticRegression().fit(X, Y)
    head.torch_state_ = torch.zeros(2)
    path = save_head(head, tmp_path / "holds_torch.joblib")
    _saved_with_torch(path, "2.3.0+cu121")
    (said,) = _said(path)
    assert "torch 2.3.0+cu121 (here " in said and "pip install torch==2.3.0" in said
    assert "torch==2.3.0+" not in said  # a pin pip can install
