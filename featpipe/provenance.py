"""What every saved artefact records about where it came from: library versions, and values
made JSON-safe. One definition, used by stores, result rows and saved heads."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np

# The libraries whose versions can change a number featpipe writes.
LIBRARIES = (
    "featpipe",
    "torch",
    "torchvision",
    "timm",
    "scikit-learn",
    "numpy",
    "scipy",
    "h5py",
    "joblib",
    "pillow",  # decodes the images (its libjpeg-turbo: the pixels)
    "simplejpeg",  # the jpeg extra: decodes JPEGs where installed
    # The extras whose code computes features or predictions: hf: and openclip: backbones,
    # the knn_faiss head.
    "transformers",
    "open_clip_torch",
    "faiss-cpu",
)


def versions() -> dict[str, str]:
    """``{"python": ..., library: version}`` for every installed library in LIBRARIES."""
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def plain(value: Any) -> Any:
    """``value`` as plain JSON types: numpy scalars and arrays become Python numbers and lists,
    tuples become lists, dict keys strings; anything else unknown becomes its ``repr``."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)
