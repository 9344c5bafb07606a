"""Typed TOML tables: frozen dataclasses read key by key, and their JSON Schema.

Each table of a pipeline file is a ``kw_only`` frozen dataclass whose fields are declared with
:func:`option`. :func:`build` checks a parsed TOML table against the field types (``int``,
``float``, ``str``, ``bool``, ``tuple[X, ...]`` for arrays, ``dict`` for free-form tables, a
nested dataclass for a sub-table, ``X | None`` for keys without a value by default) and raises
ConfigError with the key path, what was received, what is valid and a close match.
:func:`json_schema` describes the same tables for editors.
"""

from __future__ import annotations

import datetime
import json
import tomllib
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import MISSING, field, fields, is_dataclass
from typing import Any

from featpipe.errors import ConfigError, did_you_mean

Check = Callable[[Any, str], None]
_NAMES = {int: "integer", float: "float", str: "string", bool: "boolean", dict: "table"}
_JSON = {int: "integer", float: "number", str: "string", bool: "boolean", dict: "object"}
# TOML values other than strings that a string key may be given by mistake (dates, times too)
_SCALARS = (int, float, datetime.date, datetime.time)


def option(
    default: Any = MISSING,
    *,
    check: Check | None = None,
    choices: Callable[[], Iterable[str]] | None = None,
    kind: str = "value",
    doc: str = "",
) -> Any:
    """A table key: its default (none: the key is required), a check of its content, the
    names it may take (``choices``, called when checked; ``kind`` names them in errors) and a
    line of documentation for the JSON Schema."""
    meta = {"check": check, "choices": choices, "kind": kind, "doc": doc}
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=meta)
    return field(default=default, metadata=meta)


def build(cls: type, table: dict, prefix: str = "") -> Any:
    """An instance of table dataclass ``cls`` from a parsed TOML table; ``prefix`` is the key
    path of the table (``"finetune."``), used in errors."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    for key in table:
        if key not in hints:
            scope = f"[{prefix[:-1]}]" if prefix else "the top level"
            raise ConfigError(
                f"Unknown key {prefix + key!r}.{did_you_mean(key, names)} "
                f"Valid keys in {scope}: {', '.join(names)}."
            )
    values = {}
    for f in fields(cls):
        where, hint = prefix + f.name, hints[f.name]
        if is_dataclass(hint):
            sub = table.get(f.name, {})
            if not isinstance(sub, dict):
                raise ConfigError(f"{where} must be a table ([{where}]); got {sub!r}.")
            values[f.name] = build(hint, sub, f"{where}.")
        elif f.name in table:
            # a key with choices: quoting a number would not make it one of them
            quote = f.metadata.get("choices") is None
            values[f.name] = _value(table[f.name], hint, where, quote=quote)
            _check(values[f.name], f.metadata, where)
        elif f.default is MISSING and f.default_factory is MISSING:
            raise ConfigError(f"Missing required key {where!r}; add it to the file.")
    return cls(**values)


def _value(value: Any, hint: Any, where: str, *, quote: bool = True) -> Any:
    """``value`` if it has type ``hint`` (arrays become tuples), else a ConfigError. None only
    for ``X | None`` keys: TOML has none, but ``to_json`` (config.json) writes their None."""
    if value is None and type(None) in typing.get_args(hint):
        return None
    item = _array_item(hint)
    if item is not None and isinstance(value, list):
        for i, element in enumerate(value):
            if not _is(element, item):
                raise ConfigError(
                    f"{where}[{i}] must be {_type_name(item)}; got {element!r}."
                    f"{_fix(element, item, where, quote)}"
                )
        return tuple(value)
    if not _is(value, hint):
        raise ConfigError(
            f"{where} must be {_type_name(hint)}; got {type(value).__name__} {value!r}."
            f"{_fix(value, hint, where, quote)}"
        )
    return value


def _fix(value: Any, hint: Any, where: str, quote: bool = True) -> str:
    """How to write ``value`` as type ``hint``, where there is a plain way: a number or
    boolean without quotes (``lr = "0.1"``), a name that TOML read as a number, boolean or
    date in quotes (``--set name=2024``; not where ``quote`` is False: a key with choices),
    one value or ``--set seeds=0,1`` as an array."""
    item = _array_item(hint)
    if quote and item is None and str in _options(hint) and isinstance(value, _SCALARS):
        # --set name=2024 reads 2024 as TOML, an integer: a name or folder that looks like
        # a number, a boolean or a date needs its quotes.
        text = str(value).lower() if isinstance(value, bool) else _iso(value)
        return f" Write it in quotes: {json.dumps(text)}."
    if item is None:
        parsed = toml_value(value) if isinstance(value, str) else None
        if parsed is None or not _is(parsed, hint):
            return ""
        return f" Write it without quotes: {json.dumps(parsed)}."
    if isinstance(value, str):
        parts = [part.strip() for part in value.split(",")]
        values = parts if item is str else [toml_value(part) for part in parts]
    else:
        values = [value]
    if not all(v is not None and v != "" and _is(v, item) for v in values):
        return ""
    return f" Write an array: {where} = {json.dumps(values)}."


def _iso(value: Any) -> str:
    """A TOML date or time as TOML writes it (str() puts a space for its 'T')."""
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def first_repeat(keys: Iterable) -> tuple[int, int] | None:
    """``(i, j)``: the first key equal to an earlier one, at ``i``, and that one's index ``j``
    (keys that name one thing in two spellings: a mode, a backbone); None when all differ."""
    seen: dict[Any, int] = {}
    for i, key in enumerate(keys):
        if key in seen:
            return i, seen[key]
        seen[key] = i
    return None


def toml_value(text: str) -> Any:
    """``text`` read as a TOML value (as ``--set`` reads one), or None when it is not one."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return None


def _check(value: Any, meta: typing.Mapping, where: str) -> None:
    if value is None:
        return
    if meta.get("choices") is not None:
        names = list(meta["choices"]())
        many = isinstance(value, tuple)
        for i, name in enumerate(value if many else [value]):
            if name not in names:
                raise ConfigError(
                    f"{f'{where}[{i}]' if many else where}: unknown {meta['kind']} {name!r}."
                    f"{did_you_mean(name, names)} Valid: {', '.join(sorted(names))}."
                )
    if meta.get("check") is not None:
        meta["check"](value, where)


def _options(hint: Any) -> tuple[Any, ...]:
    """The types a hint allows, None left out (TOML has no null: such keys are left out)."""
    if isinstance(hint, types.UnionType):
        return tuple(h for h in typing.get_args(hint) if h is not type(None))
    return (hint,)


def _array_item(hint: Any) -> Any:
    for option_ in _options(hint):
        if typing.get_origin(option_) is tuple:
            return typing.get_args(option_)[0]
    return None


def _is(value: Any, hint: Any) -> bool:
    # TOML booleans are Python bools, which are also ints: an integer key must refuse them.
    for t in _options(hint):
        t = typing.get_origin(t) or t
        if isinstance(value, bool):
            ok = t is bool
        elif t is float:
            ok = isinstance(value, int | float)
        else:
            ok = t is not tuple and isinstance(value, t)
        if ok:
            return True
    return False


def _type_name(hint: Any) -> str:
    names = []
    for t in _options(hint):
        if typing.get_origin(t) is tuple:
            names.append(f"array of {_type_name(typing.get_args(t)[0])}s")
        else:
            names.append(_NAMES[typing.get_origin(t) or t])
    return " or ".join(dict.fromkeys(names))


def json_schema(cls: type) -> dict:
    """The JSON Schema (draft 2020-12) of table dataclass ``cls`` and its sub-tables."""
    hints = typing.get_type_hints(cls)
    properties, required = {}, []
    for f in fields(cls):
        hint = hints[f.name]
        if is_dataclass(hint):
            properties[f.name] = json_schema(hint)
            needed = "required" in properties[f.name]
        else:
            properties[f.name] = _json_key(hint, f)
            needed = f.default is MISSING and f.default_factory is MISSING
        if needed:
            required.append(f.name)
    schema = {"type": "object", "properties": properties, "additionalProperties": False}
    if cls.__doc__:
        schema["description"] = " ".join(cls.__doc__.split())
    if required:
        schema["required"] = required
    return schema


def _json_key(hint: Any, f: Any) -> dict:
    schema = _json_type(hint)
    if f.metadata.get("choices") is not None:
        names = sorted(f.metadata["choices"]())
        (schema["items"] if schema.get("type") == "array" else schema)["enum"] = names
    if f.default is not MISSING and f.default is not None:
        schema["default"] = list(f.default) if isinstance(f.default, tuple) else f.default
    if f.metadata.get("doc"):
        schema["description"] = f.metadata["doc"]
    return schema


def _json_type(hint: Any) -> dict:
    options = []
    for t in _options(hint):
        if typing.get_origin(t) is tuple:
            options.append({"type": "array", "items": _json_type(typing.get_args(t)[0])})
        else:
            options.append({"type": _JSON[typing.get_origin(t) or t]})
    return options[0] if len(options) == 1 else {"anyOf": options}
