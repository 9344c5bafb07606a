"""The preprocessing step in front of every head: standardise, L2-normalise or nothing, then PCA."""

from __future__ import annotations

import numbers

from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, Normalizer, StandardScaler

from featpipe.errors import ConfigError

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
    """``pca`` as a number of components: a whole number >= 1, or None (no PCA). int() cut
    2.5 to 2 and read True as 1, and raised a bare ValueError on 'abc'."""
    if pca is None:
        return None
    if (
        isinstance(pca, bool)
        or not isinstance(pca, numbers.Real)
        or not float(pca).is_integer()
        or pca < 1
    ):
        raise ConfigError(
            f"pca must be a positive whole number of components, or None for no PCA; got {pca!r}."
        )
    return int(pca)
