"""``results.jsonl``: one JSON object per line, one line per (method, seed) of a run.

Schema version 1. Every row is self-sufficient: ``featpipe report RUN_DIR`` rebuilds all tables
and plots from the rows alone. Fields (``?``: may be null):

- ``schema_version`` (int): 1.
- ``run`` (str): the pipeline's ``name``.
- ``method`` (str): id unique within the run, e.g. ``efficientnet_lite0/logreg@pooled`` or
  ``efficientnet_lite0/finetune:full``.
- ``kind`` (str): ``probe`` (a head on cached features) or ``finetune``.
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
- ``config_hash`` (str): hash of the data fingerprint and of the settings this method depends
  on; a re-run skips a (method, seed, config_hash) already present. Reports use only the rows
  of the run's current plan (``plan.json``, see :mod:`featpipe.report.runplan`); rows of
  earlier configurations stay in the file as history.
- ``created`` (str): ISO 8601 UTC time the row was written.
- ``classes`` (list of str): class names; every label below indexes this list.
- ``metrics`` (object): ``featpipe.evaluate.compute_metrics`` on the test split: ``n``,
  ``top1``, ``top5`` (more than 5 classes), ``balanced_accuracy``, ``macro_f1``, ``log_loss``?
  and ``ece``? (null for heads without probabilities, such as SVMs), ``confusion`` (C×C,
  rows = true class), ``per_class_accuracy`` ({class: recall?}), ``ci`` ({metric: [lo, hi]},
  95 % percentile bootstrap over test images).
- ``val_accuracy`` (float?): validation accuracy of the chosen model.
- ``params`` (object): chosen hyper-parameters (probes) or fine-tuning settings and best epoch.
- ``curve`` (list?): the probe's validation curve, ``[{"params": {...}, "score": x}, ...]``.
- ``history`` (list?): the fine-tune's history, one object per epoch (``epoch``,
  ``train_loss``, ``train_accuracy``, ``val_loss``, ``val_accuracy``, ``lr``, ``seconds``, ...).
- ``cost`` (object): ``extraction_seconds`` (the feature store's extraction, shared by every
  probe on it: count it once), ``extraction_reused`` (bool: the store came from the cache and
  the seconds are those of the run that built it), ``fit_seconds`` (search + refit, or
  training), ``predict_seconds`` (test split), ``total_seconds`` (extraction + fit + predict),
  ``images_per_s``? (inference throughput on test images, backbone forward included),
  ``peak_host_bytes`` (peak RSS during fit and predict), ``peak_device_bytes``? (null off-GPU),
  ``trainable_params``?.
- ``test`` (object): ``ids_sha256`` (sha256 of the test ids in row order; rows with equal values
  are paired in comparisons), ``y_true``, ``y_pred`` (class index per test image).
- ``provenance`` (object): ``backbone`` ({spec, weights_sha256, preprocessing}), ``source``
  ({description, fingerprint}), ``store`` ({path, key}?), ``image_size``?, ``versions``
  ({python, featpipe, torch, ...}), ``device``.

``metrics``, ``test.y_pred`` and the confusion matrix come from the method's own predictions
(a head's ``predict``); the probabilities (for SVMs a softmax of the decision function) give only
top-5, log loss and ECE.

Rows are appended and fsync'ed one at a time, so an interrupted run leaves at most one partial
last line; :func:`read_results` with ``repair=True`` drops it so the run can resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

from featpipe.errors import FeaturePipeError

SCHEMA_VERSION = 1
RESULTS_FILE = "results.jsonl"
KINDS = ("probe", "finetune")

_NUM = (int, float)
_OPT_NUM = (int, float, type(None))
_OPT_STR = (str, type(None))
_OPT_LIST = (list, type(None))
# field -> accepted types (bool is excluded from numbers below).
ROW_FIELDS: dict[str, tuple[type, ...]] = {
    "schema_version": (int,),
    "run": (str,),
    "method": (str,),
    "kind": (str,),
    "label": (str,),
    "backbone": (str,),
    "layer": _OPT_STR,
    "head": _OPT_STR,
    "mode": _OPT_STR,
    "seed": (int,),
    "config_hash": (str,),
    "created": (str,),
    "classes": (list,),
    "metrics": (dict,),
    "val_accuracy": _OPT_NUM,
    "params": (dict,),
    "curve": _OPT_LIST,
    "history": _OPT_LIST,
    "cost": (dict,),
    "test": (dict,),
    "provenance": (dict,),
}
METRIC_FIELDS: dict[str, tuple[type, ...]] = {
    "n": (int,),
    "top1": _NUM,
    "balanced_accuracy": _NUM,
    "macro_f1": _NUM,
    "log_loss": _OPT_NUM,
    "ece": _OPT_NUM,
    "confusion": (list,),
    "per_class_accuracy": (dict,),
    "ci": (dict,),
}
COST_FIELDS: dict[str, tuple[type, ...]] = {
    "extraction_seconds": _NUM,
    "extraction_reused": (bool,),
    "fit_seconds": _NUM,
    "predict_seconds": _NUM,
    "total_seconds": _NUM,
    "images_per_s": _OPT_NUM,
    "peak_host_bytes": (int,),
    "peak_device_bytes": (int, type(None)),
    "trainable_params": (int, type(None)),
}
# Fields a row may lack (rows written by older versions): checked only when present.
OPTIONAL_ROW_FIELDS: dict[str, tuple[type, ...]] = {"deterministic": (bool,)}
TEST_FIELDS: dict[str, tuple[type, ...]] = {
    "ids_sha256": (str,),
    "y_true": (list,),
    "y_pred": (list,),
}


class ResultsFormatError(FeaturePipeError, ValueError):
    """A results.jsonl row does not follow the documented schema."""


def ids_sha256(ids: Iterable[str]) -> str:
    """The pairing key of a test set: sha256 of its ids in row order."""
    return hashlib.sha256("\x1e".join(ids).encode()).hexdigest()


def _check_fields(
    obj: dict, fields: dict[str, tuple[type, ...]], where: str, optional: bool = False
) -> None:
    for name, types in fields.items():
        if name not in obj:
            if optional:
                continue
            raise ResultsFormatError(f"{where}: missing field {name!r}.")
        value = obj[name]
        # bool is an int subclass; only fields that ask for bool accept it.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            valid = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise ResultsFormatError(
                f"{where}: field {name!r} must be {valid}; "
                f"got {type(value).__name__} {value!r:.60}."
            )


def validate_row(row: dict, where: str = "row") -> None:
    """Raise ResultsFormatError naming the first field that breaks the schema."""
    if not isinstance(row, dict):
        raise ResultsFormatError(f"{where}: expected a JSON object, got {type(row).__name__}.")
    version = row.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ResultsFormatError(
            f"{where}: schema_version {version!r} is not supported (this featpipe reads "
            f"{SCHEMA_VERSION}); rebuild the run with this version of featpipe."
        )
    _check_fields(row, ROW_FIELDS, where)
    _check_fields(row, OPTIONAL_ROW_FIELDS, where, optional=True)
    if row["kind"] not in KINDS:
        raise ResultsFormatError(f"{where}: kind {row['kind']!r} is not one of {KINDS}.")
    _check_fields(row["metrics"], METRIC_FIELDS, f"{where} metrics")
    _check_fields(row["cost"], COST_FIELDS, f"{where} cost")
    _check_fields(row["test"], TEST_FIELDS, f"{where} test")
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


def append_result(path: str | Path, row: dict) -> None:
    """Validate ``row`` and append it as one line, flushed to disk before returning."""
    validate_row(row, f"new row for {row.get('method', '?')!r}")
    line = json.dumps(row, separators=(",", ":"), allow_nan=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_results(path: str | Path, *, repair: bool = False) -> list[dict]:
    """All rows of a results file (validated). A partial last line (an interrupted write) is
    skipped with a warning, and removed from the file when ``repair`` is true; a bad line
    anywhere else is an error naming its line number."""
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines) and not text.endswith("\n"):
                warnings.warn(
                    f"{where}: ignoring a partial last line (interrupted write).", stacklevel=2
                )
                if repair:
                    _truncate_to(path, len(text.encode("utf-8")) - len(line.encode("utf-8")))
                break
            raise ResultsFormatError(f"{where}: not valid JSON ({exc.msg}).") from None
        validate_row(row, where)
        rows.append(row)
    else:
        if repair and text and not text.endswith("\n"):  # cut just before its newline
            with path.open("a", encoding="utf-8") as fh:
                fh.write("\n")
    return rows


def _truncate_to(path: Path, size: int) -> None:
    with path.open("r+b") as fh:
        fh.truncate(size)


def write_results(path: str | Path, rows: Sequence[dict]) -> None:
    """Rewrite a results file with ``rows`` (validated), replacing it atomically."""
    for row in rows:
        validate_row(row, f"row for {row.get('method', '?')!r}")
    write_text_atomic(path, "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows))


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it into place, so that
    a kill leaves the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
