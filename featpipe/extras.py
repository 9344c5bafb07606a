"""Optional dependencies: which pip extra provides which library, and the error when one is
missing. Each is imported only where it is used, so featpipe runs without any of them."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from featpipe.errors import MissingExtraError

# extra -> (the modules it installs, what it enables)
EXTRAS: dict[str, tuple[tuple[str, ...], str]] = {
    "hf": (
        ("transformers", "huggingface_hub", "safetensors"),
        "hf: backbones (Hugging Face transformers image models)",
    ),
    "openclip": (("open_clip",), "open_clip: backbones (OpenCLIP image towers)"),
    "datasets": (("datasets",), "hf-dataset: sources (save_to_disk folders, parquet)"),
    "wds": (("webdataset",), "wds: sources (WebDataset tar shards)"),
    "skops": (("skops",), ".skops head files, loaded without running code"),
    "parquet": (("pyarrow", "pandas"), "featpipe export --format parquet, FeatureStore.to_pandas"),
    "faiss": (("faiss",), "the knn_faiss head (exact kNN through faiss)"),
    "jpeg": (("simplejpeg",), "faster JPEG decoding in extraction (the same pixels)"),
}


def pip_line(extra: str) -> str:
    return f'pip install "featpipe[{extra}]"'


def _findable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken install, or a module blocked in sys.modules
        return False


def has_extra(extra: str) -> bool:
    """Whether every module of ``extra`` can be imported (without importing it)."""
    return all(_findable(m) for m in EXTRAS[extra][0])


def import_extra(module: str, extra: str, what: str) -> ModuleType:
    """``import module``, or an error that says which extra to install for ``what``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{what} needs the Python package {module!r}, which is not installed "
            f"({exc}). Install it with: {pip_line(extra)}"
        ) from exc
