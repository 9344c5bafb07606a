"""Head names used by the CLI and pipelines, their classes and default hyper-parameter grids."""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.base import BaseEstimator

from featpipe.errors import ConfigError, did_you_mean
from featpipe.heads.estimators import (
    KNNProbe,
    LinearSVMProbe,
    LogisticProbe,
    MLPProbe,
    RBFSVMProbe,
)
from featpipe.heads.faiss_knn import FaissKNNProbe
from featpipe.heads.nystroem import NystroemSVMProbe
from featpipe.heads.streamed_logreg import StreamingLogisticProbe
from featpipe.registry import Registry


@dataclass(frozen=True)
class HeadEntry:
    name: str
    factory: Callable[..., BaseEstimator]
    grid: dict[str, list]  # the default selection grid
    # The parameter a run's seed sets (e.g. "random_state"); None: the head has no randomness,
    # so seeds change nothing and pipelines run it once.
    seed_param: str | None = None
    label: str = ""  # how reports name the head, e.g. "logistic regression"; default: the name
    # Whether a pipeline that names no heads runs it (heads for stores larger than RAM do not:
    # on a store that fits they repeat an in-memory head, slower).
    default: bool = True

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", self.name)


HEADS: Registry[HeadEntry] = Registry("head", hint="See `featpipe probe --help`.")


def register_head(
    name: str,
    factory: Callable[..., BaseEstimator],
    grid: dict[str, list],
    *,
    seed_param: str | None = None,
    label: str = "",
    default: bool = True,
    replace: bool = False,
) -> None:
    """Add a head under ``name`` with its default grid; a taken name raises unless ``replace``.
    ``seed_param`` names the parameter that a run's seed sets, for heads with randomness;
    ``label`` is how reports name the head (default: ``name``); ``default``: whether pipelines
    that name no heads run it."""
    HEADS.add(name, HeadEntry(name, factory, grid, seed_param, label, default), replace=replace)


# Kornblith et al. (2019): 45 log-spaced C values over [1e-6, 1e5] for logistic regression.
LOGREG_CS = [float(c) for c in np.logspace(-6, 5, 45)]

register_head("logreg", LogisticProbe, {"C": LOGREG_CS}, label="logistic regression")
register_head(
    "linear_svm",
    LinearSVMProbe,
    {"C": [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0]},
    seed_param="random_state",  # liblinear's coordinate order
    label="linear SVM",
)
register_head(
    "rbf_svm",
    RBFSVMProbe,
    {"C": [0.1, 1.0, 10.0, 100.0]},
    seed_param="random_state",  # the training subsample
    label="RBF SVM",
)
register_head("mlp", MLPProbe, {"alpha": [1e-4, 1e-2, 1.0]}, seed_param="random_state", label="MLP")
register_head("knn", KNNProbe, {"n_neighbors": [1, 5, 10, 20], "metric": ["cosine"]}, label="kNN")
# For stores larger than RAM (README: "Heads on features larger than RAM"); pipelines run
# them only when named.
register_head(
    "logreg_stream",
    StreamingLogisticProbe,
    {"C": LOGREG_CS},
    label="logistic regression (streamed)",
    default=False,
)
register_head(
    "knn_faiss",
    FaissKNNProbe,
    {"n_neighbors": [1, 5, 10, 20], "metric": ["cosine"]},
    label="kNN (faiss)",
    default=False,
)
register_head(
    "rbf_svm_nystroem",
    NystroemSVMProbe,
    {"C": [0.1, 1.0, 10.0, 100.0]},
    seed_param="random_state",  # the landmarks
    label="RBF SVM (Nystroem)",
    default=False,
)


def list_heads() -> list[str]:
    return sorted(HEADS)


def default_heads() -> list[str]:
    """The heads a pipeline runs when it names none."""
    return sorted(name for name, entry in HEADS.items() if entry.default)


def _entry(name: str) -> HeadEntry:
    return HEADS.get_or_raise(name)


def _param_names(factory: Callable[..., BaseEstimator]) -> list[str] | None:
    """The keyword parameters ``factory`` takes; None when it takes any (``**kwargs``)."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # no signature to read
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def make_head(name: str, **params) -> BaseEstimator:
    """A new, unfitted head by name, e.g. ``make_head("knn", n_neighbors=10)``."""
    entry = _entry(name)
    valid = _param_names(entry.factory)
    unknown = sorted(set(params) - set(valid)) if valid is not None else []
    if unknown:  # checked here: the constructor's TypeError names neither head nor choices
        s = "s" if len(unknown) > 1 else ""
        raise ConfigError(
            f"Head {name!r} has no parameter{s} {', '.join(map(repr, unknown))}."
            f"{did_you_mean(unknown[0], valid)} Valid: {', '.join(sorted(valid))}."
        )
    return entry.factory(**params)


def seed_param(name: str) -> str | None:
    """The parameter a run's seed sets on head ``name`` (None: the head is deterministic)."""
    return _entry(name).seed_param


def run_params(
    head: BaseEstimator, *, seed: int | None = None, device: str | None = None
) -> dict[str, object]:
    """What a run sets on a head before fitting: its seed parameter (registered heads only)
    to ``seed``, and ``device`` for heads with a ``device`` parameter. None sets nothing."""
    check_seed(seed)
    params: dict[str, object] = {}
    name = head_name(head)
    if seed is not None and name is not None and HEADS[name].seed_param:
        params[HEADS[name].seed_param] = seed
    if device is not None and "device" in head.get_params(deep=False):
        params["device"] = device
    return params


def check_seed(seed: object) -> None:
    """A run's seed (None: keep the head's own) is an integer >= 0, as numpy's generators
    take (-1 failed deep in the CV folds or few-shot draws with numpy's traceback)."""
    if seed is None:
        return
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        # No flag named: the command line shows the rule on its --seed (featpipe.cli.as_flags).
        raise ConfigError(f"seed must be an integer >= 0; got {seed!r}.")


def default_grid(name: str) -> dict[str, list]:
    """The default selection grid of a head (a fresh copy)."""
    return {k: list(v) for k, v in _entry(name).grid.items()}


def head_name(estimator: BaseEstimator) -> str | None:
    """The registered name of an estimator's class, or None for other estimators."""
    for entry in HEADS.values():
        if type(estimator) is entry.factory:
            return entry.name
    return None
