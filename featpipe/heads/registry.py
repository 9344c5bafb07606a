"""Head names used by the CLI and pipelines, their classes and default hyper-parameter grids."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.base import BaseEstimator

from featpipe.errors import ConfigError, unknown_name
from featpipe.heads.estimators import (
    KNNProbe,
    LinearSVMProbe,
    LogisticProbe,
    MLPProbe,
    RBFSVMProbe,
)


@dataclass(frozen=True)
class HeadEntry:
    name: str
    factory: Callable[..., BaseEstimator]
    grid: dict[str, list]  # the default selection grid


HEADS: dict[str, HeadEntry] = {}


def register_head(name: str, factory: Callable[..., BaseEstimator], grid: dict[str, list]) -> None:
    """Add a head under ``name``; a duplicate name raises."""
    if name in HEADS:
        raise ConfigError(f"A head named {name!r} is already registered.")
    HEADS[name] = HeadEntry(name, factory, grid)


# Kornblith et al. (2019): 45 log-spaced C values over [1e-6, 1e5] for logistic regression.
LOGREG_CS = [float(c) for c in np.logspace(-6, 5, 45)]

register_head("logreg", LogisticProbe, {"C": LOGREG_CS})
register_head("linear_svm", LinearSVMProbe, {"C": [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0]})
register_head("rbf_svm", RBFSVMProbe, {"C": [0.1, 1.0, 10.0, 100.0]})
register_head("mlp", MLPProbe, {"alpha": [1e-4, 1e-2, 1.0]})
register_head("knn", KNNProbe, {"n_neighbors": [1, 5, 10, 20], "metric": ["cosine"]})


def list_heads() -> list[str]:
    return sorted(HEADS)


def _entry(name: str) -> HeadEntry:
    if name not in HEADS:
        raise unknown_name("head", name, HEADS, hint="See `featpipe probe --help`.")
    return HEADS[name]


def make_head(name: str, **params) -> BaseEstimator:
    """A new, unfitted head by name, e.g. ``make_head("knn", n_neighbors=10)``."""
    return _entry(name).factory(**params)


def default_grid(name: str) -> dict[str, list]:
    """The default selection grid of a head (a fresh copy)."""
    return {k: list(v) for k, v in _entry(name).grid.items()}


def head_name(estimator: BaseEstimator) -> str | None:
    """The registered name of an estimator's class, or None for other estimators."""
    for entry in HEADS.values():
        if type(estimator) is entry.factory:
            return entry.name
    return None
