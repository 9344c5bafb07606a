"""The preprocessing step in front of every head: standardise, L2-normalise or nothing, then PCA."""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, Normalizer, StandardScaler

from featpipe.errors import ConfigError
from featpipe.validation import is_count

PREPROCESSING = ("standardize", "l2", "none")


def make_preprocessor(
    preprocess: str = "standardize", pca: int | None = None, random_state: int | None = 0
) -> Pipeline:
    """An unfitted pipeline: ``preprocess`` (standardize | l2 | none), then PCA to ``pca``
    components when given (fitted on whatever the head is fitted on, so no test leakage)."""
    if preprocess == "standardize":
        first = StandardScaler()
    elif preprocess == "l2":
        first = Normalizer(norm="l2")
    elif preprocess == "none":
        first = FunctionTransformer(None)  # identity; keeps the pipeline shape uniform
    else:
        raise ConfigError(f"Unknown preprocess {preprocess!r}; valid: {', '.join(PREPROCESSING)}.")
    steps = [("scale", first)]
    if pca is not None:
        steps.append(("pca", PCA(n_components=check_pca(pca), random_state=random_state)))
    return Pipeline(steps)


def check_pca(pca: object) -> int | None:
    """``pca`` as a number of components (see :func:`is_count`), or None (no PCA)."""
    if pca is None:
        return None
    if not is_count(pca):
        raise ConfigError(
            f"pca must be a positive whole number of components, or None for no PCA; got {pca!r}."
        )
    return int(pca)


def standard_scale(mean: np.ndarray, var: np.ndarray, n: int) -> np.ndarray:
    """StandardScaler's scale of ``n`` rows of mean ``mean`` and variance ``var``: the standard
    deviation, 1 for features constant up to rounding (scikit-learn's ``_is_constant_feature``
    bound), whose variance is rounding error and not a spread to divide by."""
    eps = np.finfo(np.float64).eps
    constant = var <= n * eps * var + (n * mean * eps) ** 2
    return np.where(constant, 1.0, np.sqrt(var))
