"""``open_source``: one entry point from a spec string to an ImageSource."""

from __future__ import annotations

from pathlib import Path

from featpipe.data.builtin import BUILTIN_SOURCES, load_builtin
from featpipe.data.folder import ImageFolderSource
from featpipe.data.manifest import CSVSource
from featpipe.data.source import ImageSource
from featpipe.errors import ConfigError, SourceError, did_you_mean


def open_source(spec: str | Path | ImageSource, **kwargs) -> ImageSource:
    """An ImageSource from ``spec``: an ImageSource (returned as is), a built-in dataset name
    (e.g. ``"digits"``), a folder (ImageFolderSource) or a ``.csv`` manifest (CSVSource).

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
    if isinstance(spec, str) and spec in BUILTIN_SOURCES:
        return load_builtin(spec, **kwargs)
    path = Path(spec)
    if path.is_dir():
        return ImageFolderSource(path, **kwargs)
    if path.is_file() and path.suffix.lower() == ".csv":
        return CSVSource(path, **kwargs)
    found = "is a file that is not a .csv manifest" if path.is_file() else "does not exist"
    hint = did_you_mean(str(spec), BUILTIN_SOURCES)
    raise SourceError(
        f"Cannot open image source {str(spec)!r}: it {found}.{hint} Give a folder of class "
        "folders (root/<class>/<image> or root/train/<class>/<image>), a CSV manifest "
        f"(path,label[,split]), or a built-in dataset: {', '.join(sorted(BUILTIN_SOURCES))}."
    )
