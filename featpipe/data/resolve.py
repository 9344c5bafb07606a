"""``open_source``: one entry point from a spec string to an ImageSource."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import parse_qsl

from featpipe.data.builtin import BUILTIN_SOURCES, load_builtin
from featpipe.data.folder import ImageFolderSource
from featpipe.data.manifest import CSVSource
from featpipe.data.source import ImageSource
from featpipe.errors import ConfigError, SourceError, did_you_mean

PREFIXES = ("torchvision:", "hf-dataset:", "wds:")
TABLE_OPTIONS = ("image", "label")  # ``hf-dataset:PATH?image=img&label=fine_label``
SHARD_OPTIONS = ("image", "label", "split")  # ``wds:SHARDS?image=jpg&label=json:label``
# Files that ``save_to_disk`` writes: a folder holding one is a Hugging Face dataset.
HF_MARKERS = ("dataset_dict.json", "state.json")
_PREFIX = re.compile(r"^([A-Za-z][\w.-]*):(?!//)")


def open_source(spec: str | Path | ImageSource, **kwargs) -> ImageSource:
    """An ImageSource from ``spec``:

    - an ImageSource (returned as is);
    - a built-in dataset name (``"digits"``);
    - ``torchvision:NAME@ROOT``: a torchvision dataset on disk (CIFAR10, CIFAR100, MNIST,
      FashionMNIST, KMNIST), official train/test splits;
    - ``hf-dataset:PATH[?image=COL&label=COL]``: a Hugging Face dataset saved with
      ``save_to_disk``, a parquet file or a folder of parquet files;
    - ``wds:SHARDS[?image=EXT&label=FIELD&split=FIELD]``: WebDataset tar shards
      (``/data/shards-{000000..000099}.tar``, a glob or a folder of ``.tar`` files);
    - a folder (ImageFolderSource; a ``save_to_disk`` folder is read as ``hf-dataset:``), a
      ``.csv`` manifest (CSVSource) or a ``.parquet`` file.

    ``kwargs`` (``val_fraction``, ``test_fraction``, ``seed``, ...) go to the constructor.
    A string naming a built-in wins over a folder of that name; write ``./digits`` for the folder.
    """
    if isinstance(spec, ImageSource):
        if kwargs:
            raise ConfigError(
                f"Options {sorted(kwargs)} cannot be applied to an existing {type(spec).__name__}; "
                "pass them when building it."
            )
        return spec
    if not isinstance(spec, str | Path) or not str(spec).strip():
        # Path("") is the working directory: an unset variable would read it as a dataset
        raise ConfigError(
            f"No image source given (got {spec!r}). Give a folder, a CSV manifest, a spec such "
            "as torchvision:NAME@ROOT, or a built-in dataset name such as digits."
        )
    if isinstance(spec, str):
        if spec in BUILTIN_SOURCES:
            return load_builtin(spec, **kwargs)
        prefixed = _PREFIX.match(spec)
        if prefixed and not Path(spec).exists():
            return _open_prefixed(prefixed.group(1), spec[prefixed.end() :], spec, kwargs)
    path = Path(spec).expanduser()
    if path.is_dir():
        if any((path / marker).is_file() for marker in HF_MARKERS):
            return _open_table(str(path), kwargs)
        try:
            return ImageFolderSource(path, **kwargs)
        except SourceError as err:
            # a Hub snapshot's parquet files (data/train-00000-of-00001.parquet) are no classes
            if next(path.rglob("*.parquet"), None) is None:
                raise
            raise SourceError(
                f"{err} {str(path)!r} holds parquet files: to read them as a dataset, give "
                f"hf-dataset:{path}."
            ) from None
    if path.is_file() and path.suffix.lower() == ".csv":
        return CSVSource(path, **kwargs)
    if path.is_file() and path.suffix.lower() == ".parquet":
        return _open_table(str(path), kwargs)
    found = "is a file that is not a .csv manifest" if path.is_file() else "does not exist"
    hint = did_you_mean(str(spec), BUILTIN_SOURCES)
    raise SourceError(
        f"Cannot open image source {str(spec)!r}: it {found}.{hint} Give a folder of class "
        "folders (root/<class>/<image> or root/train/<class>/<image>), a CSV manifest "
        "(path,label[,split]), torchvision:NAME@ROOT, hf-dataset:PATH (a save_to_disk folder "
        f"or parquet), or a built-in dataset: {', '.join(sorted(BUILTIN_SOURCES))}."
    )


def _open_prefixed(prefix: str, rest: str, spec: str, kwargs: dict) -> ImageSource:
    if prefix == "torchvision":
        from featpipe.data.torchvision_sources import TorchvisionSource

        name, at, root = rest.partition("@")
        if not at or not name or not root:
            raise ConfigError(
                f"Image source {spec!r} needs a dataset name and its root folder: "
                "torchvision:NAME@ROOT, e.g. torchvision:CIFAR10@/data/torchvision."
            )
        return TorchvisionSource(name, Path(root).expanduser(), **kwargs)
    if prefix == "hf-dataset":
        return _open_table(rest, kwargs)
    if prefix == "wds":
        from featpipe.data.shards import WebDatasetSource

        # "?" also is a glob wildcard: only a tail of key=value pairs is read as options.
        shards, _, query = (
            rest.rpartition("?") if re.search(r"\?\w+=[^/]*$", rest) else (rest, "", "")
        )
        options = _options(query, SHARD_OPTIONS, rest, "?image=jpg&label=json:label")
        _check_location(shards, spec, "wds:/data/shards-{000000..000099}.tar")
        return WebDatasetSource(shards, **options, **kwargs)
    raise ConfigError(
        f"Unknown image source prefix {prefix + ':'!r} in {spec!r}."
        f"{did_you_mean(prefix + ':', PREFIXES)} Valid prefixes: {', '.join(PREFIXES)} "
        "(or a folder, a .csv manifest or a built-in name without one)."
    )


def _open_table(rest: str, kwargs: dict) -> ImageSource:
    """``PATH[?image=COL&label=COL]``: a save_to_disk folder, a parquet file or folder."""
    from featpipe.data.tables import HFDatasetSource, ParquetSource

    location, _, query = rest.partition("?")
    options = _options(query, TABLE_OPTIONS, rest, "?image=img&label=fine_label")
    _check_location(location, f"hf-dataset:{rest}", "hf-dataset:/data/cifar100")
    path = Path(location).expanduser()  # after a prefix the shell leaves ~ as it is
    if not path.exists():
        raise SourceError(f"Hugging Face dataset {location!r} does not exist.")
    is_parquet = path.suffix.lower() == ".parquet" or (
        path.is_dir() and not any((path / marker).is_file() for marker in HF_MARKERS)
    )
    cls = ParquetSource if is_parquet else HFDatasetSource
    return cls(path, **options, **kwargs)


def _check_location(location: str, spec: str, example: str) -> None:
    """Refuse a prefixed spec that names no path: Path("") is the working directory, so an
    unset variable (hf-dataset:$DATA) would read whatever data lies there."""
    if not location.strip():
        raise ConfigError(
            f"Image source {spec!r} names no dataset after its prefix. Give its path, e.g. "
            f"{example}."
        )


def _options(query: str, valid: tuple[str, ...], rest: str, example: str) -> dict[str, str]:
    """The ``key=value&...`` options after a spec's ``?``, each one of ``valid``."""
    try:
        options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    except ValueError:
        raise ConfigError(
            f"Cannot read the options {query!r} in {rest!r}: write KEY=VALUE pairs joined by "
            f"&, e.g. {example}."
        ) from None
    for key in options:
        if key not in valid:
            raise ConfigError(
                f"Unknown option {key!r} in {rest!r}.{did_you_mean(key, valid)} Valid options: "
                f"{', '.join(valid)}, e.g. {example}."
            )
    return options
