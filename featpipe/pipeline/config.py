"""Declared experiments: a TOML file, checked against a schema, with defaults filled in.

A pipeline file has these tables (every key optional unless marked required)::

    name = "demo"                      # run name (default: the file's stem)
    out = "runs/demo"                  # run folder (default: runs/<name>); --out overrides
    seeds = [0]                        # head-search / fine-tuning seeds (heads without
                                       # randomness run once, with the first seed)
    device = "auto"                    # auto, cpu, cuda, cuda:1, ...
    n_boot = 1000                      # bootstrap resamples for intervals (0: none)

    [source]
    data = "digits"                    # required: built-in name, folder or CSV; --data overrides
    val_fraction = 0.1                 # carved from train where the source has no val split
    test_fraction = 0.2                # carved from train where the source has no test split
                                       # (default 0.1 and 0.2, silently ignored where the
                                       # source has the split; a value set here warns)
    split_seed = 0
    limits = { train = 5000, test = 1000 }   # stratified subset per split
    hash_contents = false

    [features]
    backbones = ["efficientnet_lite0"] # required
    layers = ["pooled"]
    image_size = 128                   # default: the weights' own size
    dtype = "float16"
    batch_size = 64
    cache_dir = "data/cache"
    on_error = "fail"                  # unreadable image: stop, or "skip" it in every method
    decode = "exact"                   # or "fast": JPEGs decoded at reduced DCT scale, for
                                       # extraction and fine-tuning alike (--decode)

    [probes]
    heads = ["logreg", "linear_svm", "rbf_svm", "mlp", "knn"]
    layers = ["pooled"]                # default: all of features.layers
    grids.logreg = { C = [0.01, 0.1, 1.0] }  # search grid per head (default: the head's own)

    [finetune]
    modes = ["full", "lpft"]           # default: none (no fine-tuning)
    backbones = [...]                  # default: features.backbones
    epochs = 3                         # and the other FineTuner settings, see FINETUNE_KEYS

Relative paths are relative to the working directory. ``--set key=value`` overrides any key by
its dotted path (``--set finetune.epochs=1``); the value is read as TOML, or as a string when it
is not valid TOML.
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featpipe.errors import ConfigError, did_you_mean

_REQUIRED = object()
# Split fractions a pipeline uses where the source lacks the split and the file sets none.
DEFAULT_FRACTIONS = {"val_fraction": 0.1, "test_fraction": 0.2}


@dataclass(frozen=True)
class Key:
    """One key of the schema: accepted Python types (after TOML parsing), default, and an
    optional check that raises ConfigError for values of the right type but wrong content."""

    types: tuple[type, ...]
    default: Any = _REQUIRED
    item: type | None = None  # element type for lists
    check: Callable[[Any, str], None] | None = None


def _choices(valid: Callable[[], Iterable[str]], kind: str) -> Callable[[Any, str], None]:
    def check(value, where: str) -> None:
        names = list(valid())
        for i, name in enumerate(value if isinstance(value, list) else [value]):
            if name not in names:
                at = f"{where}[{i}]" if isinstance(value, list) else where
                raise ConfigError(
                    f"{at}: unknown {kind} {name!r}.{did_you_mean(name, names)} "
                    f"Valid: {', '.join(sorted(names))}."
                )

    return check


def _head_names() -> list[str]:
    from featpipe.heads import list_heads  # imported late: sklearn is slow to import

    return list_heads()


def _decodes() -> tuple[str, ...]:
    from featpipe.data.images import DECODES

    return DECODES


def _on_error_modes() -> tuple[str, ...]:
    from featpipe.data.unreadable import ON_ERROR

    return ON_ERROR


def _check_modes(value: list[str], where: str) -> None:
    from featpipe.finetune.freezing import Mode

    for i, text in enumerate(value):
        try:
            Mode.parse(text)
        except ConfigError as exc:
            raise ConfigError(f"{where}[{i}]: {exc}") from None


def _positive(value, where: str) -> None:
    if value <= 0:
        raise ConfigError(f"{where} must be > 0; got {value}.")


def _non_negative(value, where: str) -> None:
    if value < 0:
        raise ConfigError(f"{where} must be >= 0; got {value}.")


def _fraction(value, where: str) -> None:
    if not 0 <= value < 1:
        raise ConfigError(f"{where} must be in [0, 1); got {value}.")


def _non_empty(value, where: str) -> None:
    if not value:
        raise ConfigError(f"{where} must list at least one entry.")


def _limits(value: dict, where: str) -> None:
    for split, n in value.items():
        if split not in ("train", "val", "test"):
            raise ConfigError(
                f"{where}.{split}: unknown split.{did_you_mean(split, ['train', 'val', 'test'])} "
                "Valid: train, val, test."
            )
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"{where}.{split} must be a positive integer; got {n!r}.")


def _grids(value: dict, where: str) -> None:
    heads = _head_names()
    for head, grid in value.items():
        if head not in heads:
            raise ConfigError(
                f"{where}.{head}: unknown head.{did_you_mean(head, heads)} "
                f"Valid: {', '.join(heads)}."
            )
        if not isinstance(grid, dict) or not grid:
            raise ConfigError(
                f"{where}.{head} must be a table of parameter = [values], e.g. "
                f"C = [0.01, 0.1, 1.0]; got {grid!r}."
            )
        for param, values in grid.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(
                    f"{where}.{head}.{param} must be a non-empty array of values; got {values!r}."
                )


_INT, _NUM, _STR, _BOOL, _LIST = (int,), (int, float), (str,), (bool,), (list,)
_OPT_INT = (int, type(None))
_OPT_NUM = (int, float, type(None))

# FineTuner settings a pipeline may set (backbone, mode, seed, device, run_dir are the runner's).
FINETUNE_KEYS: dict[str, Key] = {
    "epochs": Key(_INT, 10, check=_positive),
    "batch_size": Key(_INT, 32, check=_positive),
    "lr": Key(_NUM, 0.01, check=_positive),
    "backbone_lr_scale": Key(_NUM, 0.1),
    "optimizer": Key(_STR, "sgd"),
    "momentum": Key(_NUM, 0.9),
    "weight_decay": Key(_NUM, 1e-4),
    "warmup_epochs": Key(_NUM, 1.0),
    "label_smoothing": Key(_NUM, 0.1),
    "dropout": Key(_NUM, 0.2),
    "augment": Key(_STR, "standard"),
    "image_size": Key(_OPT_INT, None),
    "patience": Key(_OPT_INT, 3),
    "probe_C": Key((int, float, str), "auto"),
    "workers": Key(_INT, 0),
}

SCHEMA: dict[str, Key | dict] = {
    "name": Key(_STR, None),
    "out": Key(_STR, None),
    "seeds": Key(_LIST, [0], item=int, check=_non_empty),
    "device": Key(_STR, "auto"),
    "n_boot": Key(_INT, 1000, check=_non_negative),
    "source": {
        "data": Key(_STR),
        # None: DEFAULT_FRACTIONS where the source lacks the split, and no warning where not.
        "val_fraction": Key(_OPT_NUM, None, check=_fraction),
        "test_fraction": Key(_OPT_NUM, None, check=_fraction),
        "split_seed": Key(_INT, 0),
        "limits": Key((dict,), {}, check=_limits),
        "hash_contents": Key(_BOOL, False),
    },
    "features": {
        "backbones": Key(_LIST, item=str, check=_non_empty),
        "layers": Key(_LIST, ["pooled"], item=str, check=_non_empty),
        "image_size": Key(_OPT_INT, None),
        "dtype": Key(_STR, "float16", check=_choices(lambda: ["float16", "float32"], "dtype")),
        "batch_size": Key(_INT, 64, check=_positive),
        "workers": Key(_OPT_INT, None),
        "compile": Key(_BOOL, False),
        "cache_dir": Key(_STR, "data/cache"),
        "on_error": Key(_STR, "fail", check=_choices(_on_error_modes, "on_error")),
        "decode": Key(_STR, "exact", check=_choices(_decodes, "decode")),
    },
    "probes": {
        "heads": Key(_LIST, None, item=str, check=_choices(_head_names, "head")),
        "layers": Key(_LIST, None, item=str),
        "grids": Key((dict,), {}, check=_grids),
    },
    "finetune": {
        "modes": Key(_LIST, [], item=str, check=_check_modes),
        "backbones": Key(_LIST, None, item=str),
        **FINETUNE_KEYS,
    },
}


def _type_name(types: tuple[type, ...], item: type | None) -> str:
    names = []
    for t in types:
        if t is type(None):
            continue
        name = {
            int: "integer",
            float: "float",
            str: "string",
            bool: "boolean",
            dict: "table",
            list: "array",
        }[t]
        names.append(f"array of {_type_name((item,), None)}s" if t is list and item else name)
    return " or ".join(dict.fromkeys(names))


def _is(value: Any, types: tuple[type, ...]) -> bool:
    # TOML booleans are Python bools, which are also ints: an integer key must refuse them.
    if isinstance(value, bool):
        return bool in types
    return isinstance(value, types)


def _validate(table: dict, schema: dict, prefix: str) -> dict:
    out = {}
    for key, value in table.items():
        where = f"{prefix}{key}"
        if key not in schema:
            scope = f"[{prefix[:-1]}]" if prefix else "the top level"
            raise ConfigError(
                f"Unknown key {where!r}.{did_you_mean(key, schema)} "
                f"Valid keys in {scope}: {', '.join(schema)}."
            )
        spec = schema[key]
        if isinstance(spec, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{where} must be a table ([{where}]); got {value!r}.")
            out[key] = _validate(value, spec, f"{where}.")
            continue
        if not _is(value, spec.types):
            raise ConfigError(
                f"{where} must be {_type_name(spec.types, spec.item)}; "
                f"got {type(value).__name__} {value!r}."
            )
        if spec.item is not None:
            for i, item in enumerate(value):
                if not _is(item, (spec.item,)):
                    raise ConfigError(
                        f"{where}[{i}] must be {_type_name((spec.item,), None)}; got {item!r}."
                    )
        if spec.check is not None and value is not None:
            spec.check(value, where)
        out[key] = value
    for key, spec in schema.items():
        if key in out:
            continue
        if isinstance(spec, dict):
            out[key] = _validate({}, spec, f"{prefix}{key}.")
        elif spec.default is _REQUIRED:
            raise ConfigError(f"Missing required key {prefix + key!r}; add it to the file.")
        else:
            out[key] = copy.deepcopy(spec.default)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"finetune.epochs=2"`` -> (["finetune", "epochs"], 2); a value that is not TOML is a
    string (``source.data=/data/cifar``)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set needs KEY=VALUE with a dotted key; got {text!r}.")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip().split("."), value


def _apply(raw: dict, path: list[str], value: Any) -> None:
    table = raw
    for part in path[:-1]:
        table = table.setdefault(part, {})
        if not isinstance(table, dict):
            raise ConfigError(f"--set {'.'.join(path)}: {part!r} is not a table.")
    table[path[-1]] = value


def load_config(
    path: str | Path,
    overrides: Iterable[str] = (),
    *,
    data: str | None = None,
    out: str | None = None,
) -> dict:
    """Read, override and validate a pipeline file; returns the full config with defaults.

    ``overrides`` are ``key=value`` strings; ``data`` and ``out`` (the CLI's ``--data`` and
    ``--out``) replace ``source.data`` and ``out``.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"Pipeline file {str(path)!r} does not exist.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}.") from None
    return config_from_dict(raw, overrides, data=data, out=out, default_name=path.stem)


def config_from_dict(
    raw: dict,
    overrides: Iterable[str] = (),
    *,
    data: str | None = None,
    out: str | None = None,
    default_name: str = "run",
) -> dict:
    """Validate an already-parsed pipeline table (see :func:`load_config`)."""
    raw = copy.deepcopy(raw)
    for text in overrides:
        _apply(raw, *parse_override(text))
    if data is not None:
        _apply(raw, ["source", "data"], str(data))
    if out is not None:
        _apply(raw, ["out"], str(out))
    config = _validate(raw, SCHEMA, "")
    config["name"] = config["name"] or default_name
    config["out"] = config["out"] or f"runs/{config['name']}"
    features, probes, finetune = config["features"], config["probes"], config["finetune"]
    if probes["heads"] is None:
        probes["heads"] = _head_names()
    if probes["layers"] is None:
        probes["layers"] = list(features["layers"])
    for i, layer in enumerate(probes["layers"]):
        if layer not in features["layers"]:
            raise ConfigError(
                f"probes.layers[{i}]: layer {layer!r} is not extracted."
                f"{did_you_mean(layer, features['layers'])} Add it to features.layers "
                f"({', '.join(features['layers'])})."
            )
    if not probes["heads"] and not finetune["modes"]:
        raise ConfigError(
            "The pipeline runs no method: probes.heads is empty and finetune.modes is empty. "
            f"Add a head ({', '.join(_head_names())}) or a fine-tuning mode (e.g. 'full')."
        )
    if finetune["backbones"] is None:
        finetune["backbones"] = list(features["backbones"])
    if finetune["image_size"] is None:
        finetune["image_size"] = features["image_size"]
    return config
