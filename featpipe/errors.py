"""One exception root for featpipe; each subclass also refines the builtin it is closest to."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class FeaturePipeError(Exception):
    """Root of every error featpipe raises on purpose."""


class ConfigError(FeaturePipeError, ValueError):
    """A parameter, option or pipeline key is invalid."""


class UnknownNameError(ConfigError, KeyError):
    """A backbone, weights, layer, head, split or dataset name is not known."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


class SourceError(FeaturePipeError, ValueError):
    """An image source is malformed: empty class folder, one class, bad manifest."""


class MissingExtraError(FeaturePipeError, ImportError):
    """An optional library is not installed; the message names the pip extra that installs it."""


class UntrustedFileError(FeaturePipeError, ValueError):
    """A saved file holds types featpipe does not trust to rebuild; nothing in it was run."""


class ImageReadError(FeaturePipeError, OSError):
    """An image file could not be read or decoded; the message names its path.

    ``path`` and ``reason`` (e.g. "truncated file"), when given, are the parts of the message
    a caller may record on their own (a skipped row's reason in a feature store).
    """

    def __init__(self, message: str, *, path: str | None = None, reason: str | None = None):
        super().__init__(message)
        self.path = path
        self.reason = reason or message


class StoreNotFoundError(FeaturePipeError, FileNotFoundError):
    """No feature store file at a path (nothing there, or a folder)."""


class StoreMismatchError(FeaturePipeError, ValueError):
    """A feature store was made from other inputs than the ones asked for."""


class IncompleteStoreError(FeaturePipeError, RuntimeError):
    """A feature store has chunks that are not written yet."""


class MissingPartError(IncompleteStoreError):
    """A part file of a parted store is missing (its rows would read as zeros)."""


class UnreadableStoreError(StoreMismatchError):
    """A file at a store's path cannot be read as a featpipe store (truncated, damaged, a
    foreign HDF5 file or not HDF5 at all)."""


class StoreInUseError(FeaturePipeError, RuntimeError):
    """Another process holds a feature store's lock (it is being written)."""


class FileWriteError(FeaturePipeError, OSError):
    """A file featpipe writes (a report, a results file, an export, a feature store) could not
    be written or made durable; the message says what is safe, e.g. whether it is in place."""


class StoreWriteError(FileWriteError):
    """Writing a feature store failed (full disk, I/O error); finished chunks stay valid."""


class NonFiniteFeaturesError(FeaturePipeError, ArithmeticError):
    """Features are NaN or infinite once converted to the store's dtype (float16 overflow)."""


class HeadMismatchError(FeaturePipeError, ValueError):
    """A fitted head is applied to features from another backbone, layer or class list."""


def did_you_mean(name: str, choices: Iterable[str], n: int = 5) -> str:
    """A hint naming the closest valid choices, e.g. " Did you mean: 'resnet18', 'resnet34'?"."""
    choices = list(choices)
    # A name that differs only in case first: difflib compares case ('c' came closer to
    # 'pca' than to 'C').
    close = [c for c in choices if c.lower() == name.lower()][:n]
    close = close or difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
    if not close:
        close = [c for c in choices if name.lower() in c.lower()][:n]
    if not close:
        return ""
    return " Did you mean: " + ", ".join(repr(c) for c in close) + "?"


def unknown_name(kind: str, name: str, choices: Iterable[str], hint: str = "") -> UnknownNameError:
    """Build the standard 'unknown X' error: what was received, the closest valid names, the fix."""
    choices = sorted(choices)
    msg = f"Unknown {kind} {name!r}.{did_you_mean(name, choices)}"
    if len(choices) <= 12:
        msg += f" Valid: {', '.join(choices)}."
    if hint:
        msg += f" {hint}"
    return UnknownNameError(msg)


class TrainingDivergedError(FeaturePipeError, FloatingPointError):
    """A fine-tune's training loss became NaN or infinite; the message says what to lower."""


class WorkerDiedError(FeaturePipeError, RuntimeError):
    """A DataLoader worker died (the system kills one that runs out of memory); the message
    says what was kept and how to resume."""
