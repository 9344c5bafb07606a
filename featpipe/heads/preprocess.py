"""The preprocessing step in front of every head: standardise, L2-normalise or nothing, then PCA."""

from __future__ import annotations

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
        if int(pca) < 1:
            raise ConfigError(f"pca must be a positive number of components or None; got {pca}.")
        steps.append(("pca", PCA(n_components=int(pca), random_state=random_state)))
    return Pipeline(steps)
