"""``results.jsonl``: one JSON object per line, one line per (method, seed) of a run.

Schema version 1 (a row of another version is refused, naming its file and line). Rows are
written and read through :class:`ResultRow`, whose fields follow the list below. Every row is
self-sufficient: ``featpipe report RUN_DIR`` rebuilds all tables and plots from the rows alone.
Fields (``?``: may be null):

- ``schema_version`` (int): 1.
- ``run`` (str): the pipeline's ``name``.
- ``method`` (str): id unique within the run, e.g. ``efficientnet_lite0/logreg@pooled`` or
  ``efficientnet_lite0/finetune:full``.
- ``kind`` (str): a :class:`MethodKind`: ``probe`` (a head on cached features) or
  ``finetune``.
- ``label`` (str): human wording, e.g. ``logistic regression on layer pooled``.
- ``backbone`` (str): the backbone spec as declared.
- ``layer`` (str?), ``head`` (str?): feature layer and head name (probes: logreg, linear_svm,
  rbf_svm, mlp, knn).
- ``mode`` (str?): fine-tuning mode (full, lpft, bn, head, partial:N).
- ``seed`` (int): seed of the head search (CV folds and the head's random state) or of the
  fine-tuning.
- ``deterministic`` (bool, optional; false when absent): the seed changes nothing for this
  method (a head without randomness, chosen on a fixed validation split), so a run holds one
  row for it, with its first seed.
- ``train_size`` (int or null, optional; null when absent): the number of training images
  the method saw in a ``[source] train_sizes`` sweep; null when it used the whole train split.
- ``world_size`` (int, optional; 1 when absent): how many processes trained the method
  together (torchrun's ``WORLD_SIZE``: a fine-tune's DDP ranks).
- ``config_hash`` (str): hash of the data fingerprint and of the settings this method depends
  on; a re-run skips a (method, seed, config_hash) already present while the row's
  ``provenance.backbone`` is still the backbone's identity (else it computes the method again,
  keeping the old row as history). Reports use only the rows
  of the run's current plan (``plan.json``, see :mod:`featpipe.report.runplan`); rows of
  earlier configurations stay in the file as history.
- ``created`` (str): ISO 8601 UTC time the row was written.
- ``classes`` (list of str): class names; every label below indexes this list.
- ``metrics`` (object): ``featpipe.evaluate.compute_metrics`` on the test split: ``n``,
  ``top1``, ``top5`` (more than 5 classes to rank), ``balanced_accuracy``,
  ``macro_f1``, ``log_loss``? and ``ece``? (null for heads without probabilities, such as
  SVMs), ``confusion`` (C×C, rows = true class), ``per_class_accuracy`` ({class: recall?}),
  ``ci`` ({metric: [lo, hi]}, 95 %: Wilson score interval for top-1 and top-5, percentile
  bootstrap over test images for the others) and ``n_boot`` (int, optional: the resamples of
  ``ci``). ``ci`` is at the n_boot of the run that made the row: a re-run at another n_boot
  reuses the row, and its report draws balanced accuracy's and macro F1's intervals again from
  ``test`` at its own n_boot (or takes ``ci``'s where the row's ``n_boot`` is the same), and
  top-1's Wilson interval from ``n``.
- ``val_accuracy`` (float?): validation accuracy of the chosen model.
- ``params`` (object): chosen hyper-parameters (probes) or fine-tuning settings and best epoch.
- ``curve`` (list?): the probe's validation curve, ``[{"params": {...}, "score": x}, ...]``.
- ``history`` (list?): the fine-tune's history, one object per epoch (``epoch``,
  ``train_loss``, ``train_accuracy``, ``val_loss``, ``val_accuracy``, ``lr``, ``seconds``,
  ``world_size`` (the ranks that trained that epoch: a run resumed on another number of
  processes shows it), ...).
- ``cost`` (object): ``extraction_seconds`` (the feature store's extraction, shared by every
  probe on it: count it once), ``extraction_reused`` (bool: the store came from the cache and
  the seconds are those of the run that built it), ``fit_seconds`` (search + refit, or
  training, over every resumed piece of it), ``fit_process_seconds`` (float, optional: a
  fine-tune's, a grid's over every candidate; each resumed piece's fit seconds times that
  piece's processes),
  ``predict_seconds`` (test split), ``total_seconds`` (extraction + fit + predict),
  ``images_per_s``? (inference throughput on test images, backbone forward included),
  ``peak_host_bytes`` (the main process's peak RSS during fit and predict, rank 0's under
  torchrun; DataLoader worker processes not included), ``peak_device_bytes``? (null off-GPU),
  ``trainable_params``?. Seconds are the wall seconds of the method's processes; a report counts
  those of a method run on several processes at once (``world_size`` > 1) once per process, as
  a store's extraction sums the seconds of the processes that filled it (process-seconds): fit
  seconds are ``fit_process_seconds`` where the row has it (a run resumed on another number of
  processes counts each piece at its own), else ``fit_seconds`` times ``world_size``.
- ``test`` (object): ``ids_sha256`` (sha256 of the test ids in row order; rows with equal values
  are paired in comparisons), ``y_true``, ``y_pred`` (class index per test image).
- ``provenance`` (object): ``backbone`` ({spec, weights_sha256, preprocessing}), ``source``
  ({description, fingerprint}), ``store`` ({path, key}?), ``compute``? (a probe's: its
  store's precision and decode path, which decide with the config hash whether a re-run reuses
  the row, see :mod:`featpipe.report.runplan`), ``image_size``?, ``versions``
  ({python, featpipe, torch, ...}), ``device``, ``frozen``? (a ``partial:N`` fine-tune's frozen
  modules: a row whose list differs from what the backbone's stages freeze now is recomputed).

``metrics``, ``test.y_pred`` and the confusion matrix come from the method's own predictions
(a head's ``predict``); the probabilities (for SVMs a softmax of the decision function) give only
top-5, log loss and ECE.

Rows are appended and fsync'ed one at a time, so an interrupted run leaves at most one partial
last line; :func:`read_results` with ``repair=True`` drops it so the run can resume.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import types
import typing
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from featpipe.atomic import sync_placed, write_text_atomic
from featpipe.errors import FeaturePipeError
from featpipe.evaluate.cost import Cost

SCHEMA_VERSION = 1
RESULTS_FILE = "results.jsonl"


class MethodKind(StrEnum):
    """What a method trains: a head on cached features, or the backbone itself."""

    PROBE = "probe"
    FINETUNE = "finetune"


KINDS = tuple(MethodKind)
# A field rows written by older versions may lack: checked only when present.
_OPTIONAL = {"optional": True}


class ResultsFormatError(FeaturePipeError, ValueError):
    """A results.jsonl row does not follow the documented schema."""


def ids_sha256(ids: Iterable[str]) -> str:
    """The pairing key of a test set: sha256 of its ids in row order."""
    return hashlib.sha256("\x1e".join(ids).encode()).hexdigest()


@dataclass(frozen=True)
class Predictions:
    """A row's ``test``: which images, their true classes and the method's predictions."""

    ids_sha256: str
    y_true: list[int]
    y_pred: list[int]

    @classmethod
    def of(cls, ids: Iterable[str], y_true: Iterable, y_pred: Iterable) -> Predictions:
        return cls(ids_sha256(ids), [int(v) for v in y_true], [int(v) for v in y_pred])


@dataclass(frozen=True, kw_only=True)
class ResultRow:
    """One line of results.jsonl (fields documented above, in this order)."""

    schema_version: int = SCHEMA_VERSION
    run: str
    method: str
    kind: MethodKind
    label: str
    backbone: str
    layer: str | None = None
    head: str | None = None
    mode: str | None = None
    seed: int
    deterministic: bool = field(default=False, metadata=_OPTIONAL)
    # Training images used, with a [source] train_sizes sweep; None: the whole train split.
    train_size: int | None = field(default=None, metadata=_OPTIONAL)
    world_size: int = field(default=1, metadata=_OPTIONAL)  # processes that trained it
    config_hash: str
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    classes: list[str]
    metrics: dict
    val_accuracy: float | None
    params: dict
    curve: list | None = None
    history: list | None = None
    cost: Cost
    test: Predictions
    provenance: dict

    def to_json(self) -> dict:
        """The row as the JSON object written to results.jsonl."""
        out = {
            f.name: getattr(self, f.name)
            for f in fields(self)  # an optional field left at None is left out
            if not (
                f.metadata.get("optional") and f.default is None and getattr(self, f.name) is None
            )
        }
        out["kind"] = str(self.kind)
        out["cost"] = self.cost.to_json()
        out["test"] = {f.name: getattr(self.test, f.name) for f in fields(self.test)}
        return out

    @classmethod
    def from_json(cls, obj: Any, where: str = "row") -> ResultRow:
        """Check a JSON object against the schema and build its row; ResultsFormatError names
        ``where`` (file:line) and the first field that breaks it."""
        if not isinstance(obj, dict):
            raise ResultsFormatError(f"{where}: expected a JSON object, got {type(obj).__name__}.")
        version = obj.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ResultsFormatError(
                f"{where}: schema_version {version!r} is not supported (this featpipe reads "
                f"{SCHEMA_VERSION}); rebuild the run with this version of featpipe."
            )
        _check_fields(obj, cls, where)
        if obj["kind"] not in KINDS:
            raise ResultsFormatError(
                f"{where}: kind {obj['kind']!r} is not one of {', '.join(KINDS)}."
            )
        _check_fields(obj["metrics"], METRIC_FIELDS, f"{where} metrics")
        _check_fields(obj["cost"], Cost, f"{where} cost")
        _check_fields(obj["test"], Predictions, f"{where} test")
        _check_shapes(obj, where)
        values = {f.name: obj[f.name] for f in fields(cls) if f.name in obj}
        values["kind"] = MethodKind(obj["kind"])
        values["cost"] = _build(Cost, obj["cost"])
        values["test"] = _build(Predictions, obj["test"])
        return cls(**values)


METRIC_FIELDS: dict[str, Any] = {
    "n": int,
    "top1": float,
    "balanced_accuracy": float,
    "macro_f1": float,
    "log_loss": float | None,
    "ece": float | None,
    "confusion": list,
    "per_class_accuracy": dict,
    "ci": dict,
}


def _build(cls: type, obj: dict):
    return cls(**{f.name: obj[f.name] for f in fields(cls) if f.name in obj})


def _accepts(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a type hint. bool is an int subclass: only bool accepts it;
    float accepts integers (JSON has one number type)."""
    if isinstance(hint, types.UnionType):
        return any(_accepts(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if isinstance(value, bool):
        return hint is bool
    origin = typing.get_origin(hint) or hint
    if origin is float:
        return isinstance(value, int | float)
    if issubclass(origin, str):  # str and str-valued enums (MethodKind)
        return isinstance(value, str)
    if is_dataclass(origin):
        return isinstance(value, dict)
    return isinstance(value, origin)


def _type_name(hint: Any) -> str:
    if isinstance(hint, types.UnionType):
        return " or ".join(_type_name(h) for h in typing.get_args(hint))
    if hint is type(None):
        return "null"
    origin = typing.get_origin(hint) or hint
    if origin is float:
        return "int or float"
    if issubclass(origin, str):
        return "str"
    return "object" if is_dataclass(origin) else origin.__name__


def _check_fields(obj: dict, spec: type | dict[str, Any], where: str) -> None:
    """Each field of a dataclass (or of a name -> hint table) is present and of its type; a
    dataclass field marked optional may be missing."""
    if isinstance(spec, dict):
        hints, optional = spec, set()
    else:
        hints = typing.get_type_hints(spec)
        optional = {f.name for f in fields(spec) if f.metadata.get("optional")}
    for name, hint in hints.items():
        if name not in obj:
            if name in optional:
                continue
            raise ResultsFormatError(f"{where}: missing field {name!r}.")
        value = obj[name]
        if not _accepts(value, hint):
            raise ResultsFormatError(
                f"{where}: field {name!r} must be {_type_name(hint)}; "
                f"got {type(value).__name__} {value!r:.60}."
            )


def _check_shapes(row: dict, where: str) -> None:
    n_classes = len(row["classes"])
    cm = row["metrics"]["confusion"]
    if len(cm) != n_classes or any(len(r) != n_classes for r in cm):
        raise ResultsFormatError(f"{where}: confusion must be {n_classes}×{n_classes}.")
    test = row["test"]
    if len(test["y_true"]) != len(test["y_pred"]) or len(test["y_true"]) != row["metrics"]["n"]:
        raise ResultsFormatError(
            f"{where}: test.y_true, test.y_pred and metrics.n disagree "
            f"({len(test['y_true'])}, {len(test['y_pred'])}, {row['metrics']['n']})."
        )
    for name in ("y_true", "y_pred"):  # indices into classes; comparisons count them by class
        bad = [v for v in test[name] if not _is_index(v, n_classes)]
        if bad:
            raise ResultsFormatError(
                f"{where}: test.{name} holds {bad[0]!r}; it holds class indices, whole numbers "
                f"0..{n_classes - 1} into the row's {n_classes} classes."
            )


def _is_index(value: Any, n_classes: int) -> bool:
    return type(value) is int and 0 <= value < n_classes


def validate_row(row: dict, where: str = "row") -> ResultRow:
    """Raise ResultsFormatError naming the first field that breaks the schema; returns the
    typed row."""
    return ResultRow.from_json(row, where)


def append_result(path: str | Path, row: ResultRow | dict) -> dict:
    """Validate ``row`` and append it as one line, flushed to disk before returning; returns
    the JSON object written."""
    if isinstance(row, ResultRow):
        row = row.to_json()
    line = _line(row, f"new row for {row.get('method', '?')!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if _ends_mid_line(path):  # a killed writer: appending would glue this row to its half line
        read_results(path, repair=True)
    new = not path.exists()
    with path.open("a", encoding="utf-8") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    if new:  # a new file's name lives in its folder: synced too, or a power cut may lose it
        sync_placed(path)
    return row


def _line(row: dict, where: str) -> str:
    """A row about to be written, checked, as one JSON line (without its newline)."""
    validate_row(row, where)
    try:
        return json.dumps(row, separators=(",", ":"), allow_nan=False)
    except ValueError:  # JSON has no NaN or infinity: name where it is
        path, value = _non_finite(row) or ("?", "not finite")
        raise ResultsFormatError(
            f"{where}: field {path!r} is {value}; results.jsonl holds finite numbers only: "
            "write null for a value that is not known."
        ) from None


def _non_finite(value: Any, path: str = "") -> tuple[str, float] | None:
    """The first NaN or infinity in a JSON value: (its path, e.g. ``history[3].val_loss``, and
    the value), or None."""
    if isinstance(value, dict):
        items = [(f"{path}.{k}" if path else str(k), v) for k, v in value.items()]
    elif isinstance(value, list | tuple):
        items = [(f"{path}[{i}]", v) for i, v in enumerate(value)]
    else:
        return (path, value) if isinstance(value, float) and not math.isfinite(value) else None
    for inner, item in items:
        if (bad := _non_finite(item, inner)) is not None:
            return bad
    return None


def read_results(path: str | Path, *, repair: bool = False) -> list[dict]:
    """All rows of a results file as JSON objects, each validated as a :class:`ResultRow`.
    A partial last line (an interrupted write) is skipped with a warning, and removed from the
    file when ``repair`` is true; a bad line anywhere else is an error naming its line number."""
    path = Path(path)
    if not path.exists():
        return []
    if path.is_dir():  # else IsADirectoryError, a traceback
        raise ResultsFormatError(
            f"{path} is a folder; the results must be a file of that name (one JSON row per "
            "line). Move or rename that folder: `featpipe run` then writes the file anew."
        )
    data = path.read_bytes()  # bytes: a damaged line need not be UTF-8
    lines = data.split(b"\n")
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line.decode("utf-8"))
        except ValueError as exc:  # not JSON (JSONDecodeError) or not UTF-8 (UnicodeDecodeError)
            if number == len(lines) and not data.endswith(b"\n"):
                warnings.warn(
                    f"{where}: ignoring a partial last line (interrupted write).", stacklevel=2
                )
                if repair:
                    _truncate_to(path, len(data) - len(line))
                break
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8 text"
            raise ResultsFormatError(
                f"{where}: not valid JSON ({reason}). Remove that line to go on: `featpipe run` "
                "computes again any method whose row is missing."
            ) from None
        validate_row(row, where)
        rows.append(row)
    else:
        if repair and data and not data.endswith(b"\n"):  # cut just before its newline
            with path.open("a", encoding="utf-8") as fh:
                fh.write("\n")
    return rows


def _ends_mid_line(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            if fh.seek(0, os.SEEK_END) == 0:
                return False
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) != b"\n"
    except FileNotFoundError:
        return False


def _truncate_to(path: Path, size: int) -> None:
    with path.open("r+b") as fh:
        fh.truncate(size)


def write_results(path: str | Path, rows: Sequence[dict]) -> None:
    """Rewrite a results file with ``rows`` (validated), replacing it atomically."""
    lines = [_line(row, f"row for {row.get('method', '?')!r}") + "\n" for row in rows]
    write_text_atomic(path, "".join(lines))
