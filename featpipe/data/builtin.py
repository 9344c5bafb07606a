"""Named built-in datasets that need no download, in a registry filled by a decorator."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import numpy as np

from featpipe.data.arrays import ArraySource
from featpipe.data.source import ImageSource
from featpipe.errors import ConfigError
from featpipe.registry import Registry

BuiltinFactory = Callable[..., ImageSource]
BUILTIN_SOURCES: Registry[BuiltinFactory] = Registry("dataset")


def register_builtin_source(
    name: str, *, replace: bool = False
) -> Callable[[BuiltinFactory], BuiltinFactory]:
    """Register a factory (keyword arguments only) under ``name``; a taken name raises unless
    ``replace``."""
    return BUILTIN_SOURCES.decorator(name, replace=replace)


def list_builtin_sources() -> list[str]:
    """Sorted names of the built-in datasets."""
    return sorted(BUILTIN_SOURCES)


def load_builtin(name: str, **kwargs) -> ImageSource:
    """The built-in dataset ``name``, built with ``kwargs`` (e.g. ``val_fraction``, ``seed``)."""
    factory = BUILTIN_SOURCES.get_or_raise(name)
    signature = inspect.signature(factory)
    try:
        signature.bind(**kwargs)
    except TypeError as err:
        raise ConfigError(
            f"Built-in dataset {name!r} does not accept {sorted(kwargs)}: {err}. "
            f"Its options: {', '.join(signature.parameters)}."
        ) from None
    return factory(**kwargs)


@register_builtin_source("digits")
def digits(*, val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0) -> ArraySource:
    """scikit-learn's 1,797 8x8 handwritten digits, gray levels 0..16 scaled to 0..255."""
    from sklearn.datasets import load_digits  # imported here: sklearn is slow to import

    data = load_digits()
    images = np.rint(data.images * (255 / 16)).astype(np.uint8)
    return ArraySource(
        images,
        data.target,
        classes=[str(d) for d in range(10)],
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        name="digits",
    )
