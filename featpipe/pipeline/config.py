"""Declared experiments: a TOML file read into typed, frozen tables, with defaults filled in.

A pipeline file has these tables (every key optional unless marked required)::

    name = "demo"                      # run name (default: the file's stem)
    out = "runs/demo"                  # run folder (default: runs/<name>); --out overrides
    seeds = [0]                        # head-search / fine-tuning seeds (heads without
                                       # randomness run once, with the first seed)
    device = "auto"                    # auto, cpu, cuda, cuda:1, ...
    n_boot = 1000                      # bootstrap resamples (0: none, else >= 40; top-1: Wilson)

    [source]
    data = "digits"                    # required: built-in name, folder or CSV; --data overrides
    val_fraction = 0.1                 # carved from train where the source has no val split
    test_fraction = 0.2                # carved from train where the source has no test split
                                       # (default 0.1 and 0.2, silently ignored where the
                                       # source has the split; a value set here warns)
    split_seed = 0
    limits = { train = 5000, test = 1000 }   # stratified subset per split
    train_sizes = [100, 500, 2000]     # data-size sweep: every method at each number of train
                                       # images (stratified, seeded, nested subsets of train;
                                       # val and test fixed); default: none, the whole train
    hash_contents = false

    [features]
    backbones = ["efficientnet_lite0"] # required
    layers = ["pooled"]
    image_size = 128                   # default: the weights' own size
    dtype = "float16"
    batch_size = 64
    cache_dir = "data/cache"
    on_error = "fail"                  # unreadable image or NaN/inf features: stop, or "skip"
    decode = "exact"                   # or "fast": JPEGs decoded at reduced DCT scale, for
                                       # extraction and fine-tuning alike (--decode)

    [probes]
    heads = ["logreg", "linear_svm", "rbf_svm", "mlp", "knn"]
    layers = ["pooled", "pooled+blocks.5:avg"]  # default: all of features.layers; '+'
                                       # concatenates stored layers (each standardised)
    grids.logreg = { C = [0.01, 0.1, 1.0] }  # search grid per head (default: the head's own)

    [finetune]
    modes = ["full", "lpft"]           # default: none (no fine-tuning)
    backbones = [...]                  # default: features.backbones
    epochs = 3                         # and every other FineTuner setting, with FineTuner's
                                       # defaults, except those the runner sets (SET_BY_RUNNER)
    grid = { lr = [0.01, 0.05], weight_decay = [0.0, 1e-4] }  # each combination trains, the
                                       # best on val is tested (default: none)

Relative paths are relative to the working directory; ``~`` and ``$VAR`` in source.data, out
and features.cache_dir are expanded as a shell would (a file has no shell to do it).
``--set key=value`` overrides any key by its dotted path (``--set finetune.epochs=1``); the
value is read as TOML, or as a string when it is not valid TOML. ``featpipe run --schema``
prints the JSON Schema of these tables.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import re
import tomllib
import typing
from collections.abc import Iterable
from dataclasses import asdict, dataclass, make_dataclass, replace
from pathlib import Path
from typing import Any

from featpipe.errors import ConfigError, did_you_mean
from featpipe.evaluate.metrics import DEFAULT_BOOT, check_n_boot
from featpipe.pipeline.schema import build, first_repeat, json_schema, option, toml_value

# Split fractions a pipeline uses where the source lacks the split and the file sets none.
DEFAULT_FRACTIONS = {"val_fraction": 0.1, "test_fraction": 0.2}
# FineTuner parameters a pipeline does not set in [finetune], each with what to do instead:
# a user who writes one in [finetune] is told where it goes, not "unknown key".
SET_BY_RUNNER = {
    "backbone": "list backbones in finetune.backbones",
    "mode": "list modes in finetune.modes",
    "seed": "list seeds in the top-level seeds (each fine-tune runs once per seed)",
    "device": "set the top-level device",
    "run_dir": "set out, the run folder (each fine-tune gets its own folder in it)",
    "resume": "remove it: featpipe run always resumes where it stopped",
    "callbacks": "remove it: featpipe run logs each fine-tune itself",
    "verbose": "remove it: featpipe run --quiet turns progress bars off",
    "val_fraction": "set source.val_fraction (one val split for every method)",
    "decode": "set features.decode (one decode for extraction and fine-tuning)",
}


def _head_names() -> list[str]:
    from featpipe.heads import list_heads  # imported late: sklearn is slow to import

    return list_heads()


def _default_heads() -> list[str]:
    from featpipe.heads.registry import default_heads

    return default_heads()


def _decodes() -> tuple[str, ...]:
    from featpipe.data.images import DECODES

    return DECODES


def _on_error_modes() -> tuple[str, ...]:
    from featpipe.data.unreadable import ON_ERROR

    return ON_ERROR


def _check_modes(value: tuple[str, ...], where: str) -> None:
    from featpipe.finetune.freezing import Mode

    _each_once(value, where)
    modes = []
    for i, text in enumerate(value):
        try:
            modes.append(Mode.parse(text))
        except ConfigError as exc:
            raise ConfigError(f"{where}[{i}]: {exc}") from None
    # 'partial:02' is 'partial:2': the same fine-tune would train twice under two labels.
    if repeat := first_repeat(modes):
        i, j = repeat
        raise ConfigError(
            f"{where}[{i}] = {value[i]!r} is the mode of {where}[{j}] = {value[j]!r} "
            f"({str(modes[i])!r}); list each mode once."
        )


def _check_probe_layers(value: tuple[str, ...], where: str) -> None:
    from featpipe.heads.splits import layer_parts  # late: sklearn is slow to import

    _each_once(value, where)
    joined = []
    for i, text in enumerate(value):
        try:
            parts = layer_parts(text)
        except ConfigError as exc:
            raise ConfigError(f"{where}[{i}]: {exc}") from None
        if len(parts) == 1:  # joined names may space their '+'
            _unspaced(text, f"{where}[{i}]")
        joined.append(frozenset(parts))
    # 'pooled + stage1' and 'stage1+pooled' are the features of 'pooled+stage1': the same
    # probes would run twice, as two methods of the report.
    if repeat := first_repeat(joined):
        i, j = repeat
        raise ConfigError(
            f"{where}[{i}] = {value[i]!r} joins the layers of {where}[{j}] = {value[j]!r}; "
            "list each layer or join once."
        )


# FineTuner settings a pipeline needs above 0 (FineTuner itself takes epochs = 0: LP-FT's probe).
POSITIVE_FINETUNE = frozenset({"epochs", "batch_size", "lr"})


def _positive(value, where: str) -> None:
    if value <= 0:
        raise ConfigError(f"{where} must be > 0; got {value}.")


def _non_negative(value, where: str) -> None:
    if value < 0:
        raise ConfigError(f"{where} must be >= 0; got {value}.")


def _n_boot(value, where: str) -> None:
    check_n_boot(value)


def _fraction(value, where: str) -> None:
    if not 0 <= value < 1:
        raise ConfigError(f"{where} must be in [0, 1); got {value}.")


def _non_empty(value, where: str) -> None:
    if not value:
        raise ConfigError(f"{where} must list at least one entry.")


def _not_blank(value: str, where: str) -> None:
    if not value.strip():
        raise ConfigError(f"{where} is empty; give a built-in dataset name, a folder or a CSV.")


def _folder(value: str, where: str) -> None:
    # "" is the working folder: most likely an unset variable (--out "$OUT"), not a choice.
    if not value.strip():
        raise ConfigError(f"{where} is empty; give a folder, or leave the key out for its default.")


def _each_once(value, where: str) -> None:
    # A repeated entry runs the same jobs twice, writing two rows with one key.
    twice = [v for i, v in enumerate(value) if v in value[:i]]
    if twice:
        raise ConfigError(f"{where} lists {twice[0]!r} twice: {list(value)}. List each once.")


def _listed(value, where: str) -> None:
    _non_empty(value, where)
    _each_once(value, where)


def _stored_layers(value: tuple[str, ...], where: str) -> None:
    _listed(value, where)
    for i, text in enumerate(value):
        _unspaced(text, f"{where}[{i}]")


def _unspaced(layer: str, where: str) -> None:
    # Stores name a layer without spaces around it, and probes.layers reads names stripped:
    # a spaced name in either list matches no layer of the other.
    if layer != layer.strip():
        raise ConfigError(
            f"{where} = {layer!r} has spaces around the layer name; write {layer.strip()!r}."
        )


def _seeds(value, where: str) -> None:
    _non_empty(value, where)
    for i, seed in enumerate(value):
        _non_negative(seed, f"{where}[{i}]")
    if len(set(value)) < len(value):  # the same jobs twice, rows with the same key
        raise ConfigError(f"{where} lists a seed twice: {list(value)}. List each seed once.")


def _limits(value: dict, where: str) -> None:
    for split, n in value.items():
        if split not in ("train", "val", "test"):
            raise ConfigError(
                f"{where}.{split}: unknown split.{did_you_mean(split, ['train', 'val', 'test'])} "
                "Valid: train, val, test."
            )
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"{where}.{split} must be a positive integer; got {n!r}.")


def _train_sizes(value: tuple[int, ...], where: str) -> None:
    if len(set(value)) != len(value) or any(n < 1 for n in value):
        raise ConfigError(
            f"{where} must list different positive numbers of training images; got {list(value)}."
        )


def _finetune_grid(value: dict, where: str) -> None:
    from featpipe.finetune.search import check_grid

    check_grid(value, where)
    # A grid value is held to its setting's bound: epochs = [0] would report the untrained
    # network as a fine-tune, where finetune.epochs = 0 is refused.
    for name in POSITIVE_FINETUNE & value.keys():
        for v in value[name]:
            if isinstance(v, int | float) and not isinstance(v, bool):
                _positive(v, f"{where}.{name}")


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


@dataclass(frozen=True, kw_only=True)
class SourceConfig:
    """[source]: the images, their splits and subsets."""

    data: str = option(
        check=_not_blank, doc="built-in name, image folder or CSV manifest; --data overrides"
    )
    # None: DEFAULT_FRACTIONS where the source lacks the split, and no warning where not.
    val_fraction: float | None = option(
        None, check=_fraction, doc="share of train carved as val where the source has none"
    )
    test_fraction: float | None = option(
        None, check=_fraction, doc="share of train carved as test where the source has none"
    )
    split_seed: int = option(0, check=_non_negative)
    limits: dict[str, int] = option({}, check=_limits, doc="stratified subset per split")
    train_sizes: tuple[int, ...] = option(
        (),
        check=_train_sizes,
        doc="data-size sweep: every method runs on stratified, seeded, nested subsets of train "
        "of these sizes (val and test fixed); default: the whole train split",
    )
    hash_contents: bool = option(False, doc="fingerprint image bytes, not only file names")


@dataclass(frozen=True, kw_only=True)
class FeaturesConfig:
    """[features]: the frozen backbones and the layers stored for the probes."""

    backbones: tuple[str, ...] = option(check=_listed, doc="backbone specs")
    layers: tuple[str, ...] = option(("pooled",), check=_stored_layers)
    image_size: int | None = option(None, doc="default: the weights' own size")
    dtype: str = option("float16", choices=lambda: ["float16", "float32"], kind="dtype")
    batch_size: int = option(64, check=_positive)
    workers: int | None = option(
        None,
        check=_non_negative,
        doc="decoding workers (CUDA) or lanes (CPU); default min(4, cores); see --workers",
    )
    compile: bool = option(False)
    cache_dir: str = option("data/cache", check=_folder)
    on_error: str = option(
        "fail",
        choices=_on_error_modes,
        kind="on_error",
        doc="an unreadable image, or NaN/inf features: stop or skip",
    )
    decode: str = option(
        "exact",
        choices=_decodes,
        kind="decode",
        doc="fast: JPEGs decoded at reduced DCT scale, for extraction and fine-tuning alike",
    )


@dataclass(frozen=True, kw_only=True)
class ProbesConfig:
    """[probes]: the heads fitted on each stored layer (None until loaded: every head and
    every stored layer)."""

    heads: tuple[str, ...] | None = option(None, check=_each_once, choices=_head_names, kind="head")
    layers: tuple[str, ...] | None = option(
        None,
        check=_check_probe_layers,
        doc="default: all of features.layers; 'pooled+blocks.5:avg' concatenates stored "
        "layers, each standardised on train",
    )
    grids: dict[str, dict[str, list]] = option(
        {}, check=_grids, doc="search grid per head, e.g. logreg = { C = [0.1, 1.0] }"
    )


def _finetune_table() -> type:
    """The [finetune] table's class: its modes and backbones, and every FineTuner setting not
    in SET_BY_RUNNER, with its type and default read from FineTuner itself (one place)."""
    from featpipe.finetune.tuner import FineTuner

    hints = typing.get_type_hints(FineTuner.__init__)
    specs = [
        ("modes", tuple[str, ...], option((), check=_check_modes, doc="default: no fine-tuning")),
        (
            "backbones",
            tuple[str, ...] | None,
            option(None, check=_each_once, doc="default: features.backbones"),
        ),
        (
            "grid",
            dict[str, list],
            option(
                {},
                check=_finetune_grid,
                doc="settings to search, e.g. { lr = [0.01, 0.05], weight_decay = [0, 1e-4] }: "
                "each combination trains, the best on val is tested",
            ),
        ),
    ]
    defaults = FineTuner().get_params()
    # In signature order (get_params sorts), the order rows and reports list them in.
    params = [p for p in inspect.signature(FineTuner).parameters if p not in SET_BY_RUNNER]
    for name in params:
        check = _positive if name in POSITIVE_FINETUNE else None
        specs.append((name, hints[name], option(defaults[name], check=check)))

    def finetuner_params(self) -> dict[str, Any]:
        """The FineTuner keyword arguments of this table."""
        return {name: getattr(self, name) for name in params}

    namespace = {
        "params": finetuner_params,
        "__module__": __name__,
        "__doc__": "[finetune]: the fine-tuning modes and FineTuner's settings.",
    }
    return make_dataclass("FinetuneConfig", specs, frozen=True, kw_only=True, namespace=namespace)


FinetuneConfig = _finetune_table()


@dataclass(frozen=True, kw_only=True)
class PipelineConfig:
    """A pipeline file (``pipelines/*.toml``)."""

    name: str | None = option(None, doc="run name (default: the file's stem)")
    out: str | None = option(
        None, check=_folder, doc="run folder (default: runs/<name>); --out overrides"
    )
    seeds: tuple[int, ...] = option((0,), check=_seeds, doc="head-search and fine-tuning seeds")
    device: str = option("auto", doc="auto, cpu, cuda or cuda:N")
    n_boot: int = option(
        DEFAULT_BOOT,
        check=_n_boot,
        doc="bootstrap resamples for intervals (0: none; top-1 uses Wilson)",
    )
    source: SourceConfig
    features: FeaturesConfig
    probes: ProbesConfig
    finetune: FinetuneConfig  # type: ignore[valid-type]

    def to_json(self) -> dict:
        """The config as JSON-ready tables (arrays as lists), as saved in config.json."""
        return json.loads(json.dumps(asdict(self)))


def pipeline_schema() -> dict:
    """The JSON Schema of pipeline files (``featpipe run --schema``)."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "featpipe pipeline",
        **json_schema(PipelineConfig),
    }


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"finetune.epochs=2"`` -> (["finetune", "epochs"], 2); a value that is not TOML is a
    string (``source.data=/data/cifar``)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set needs KEY=VALUE with a dotted key; got {text!r}.")
    value = toml_value(raw)
    return key.strip().split("."), raw if value is None else value


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
) -> PipelineConfig:
    """Read, override and validate a pipeline file; returns the full config with defaults.

    ``overrides`` are ``key=value`` strings; ``data`` and ``out`` (the CLI's ``--data`` and
    ``--out``) replace ``source.data`` and ``out``.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"Pipeline file {str(path)!r} does not exist.") from None
    except IsADirectoryError:
        raise ConfigError(
            f"Pipeline file {str(path)!r} is a folder; give one of its .toml files."
        ) from None
    except OSError as exc:
        raise ConfigError(f"Cannot read pipeline file {str(path)!r}: {exc.strerror}.") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path} is not UTF-8 text (byte {exc.start}: {exc.object[exc.start : exc.end]!r}); "
            "TOML files are UTF-8: save it as UTF-8."
        ) from None
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
) -> PipelineConfig:
    """Validate an already-parsed pipeline table (see :func:`load_config`)."""
    raw = copy.deepcopy(raw)
    for text in overrides:
        _apply(raw, *parse_override(text))
    _refuse_runner_keys(raw.get("finetune"))
    if data is not None:
        _apply(raw, ["source", "data"], str(data))
    if out is not None:
        _apply(raw, ["out"], str(out))
    return _complete(build(PipelineConfig, raw), default_name)


def _refuse_runner_keys(table: Any) -> None:
    """A FineTuner setting the run sets itself, written in [finetune], is refused saying where
    it goes (else 'Unknown key', or a did-you-mean of another key: 'decode' -> 'modes')."""
    for name in table if isinstance(table, dict) else ():
        if name in SET_BY_RUNNER:
            raise ConfigError(
                f"finetune.{name} is set by featpipe run for each fine-tune, not in "
                f"[finetune]: {SET_BY_RUNNER[name]}."
            )


def _complete(config: PipelineConfig, default_name: str) -> PipelineConfig:
    """Fill the defaults that come from other keys, and check keys against each other."""
    from featpipe.heads.splits import layer_parts  # late: sklearn is slow to import

    features, probes, finetune = config.features, config.probes, config.finetune
    name = config.name or default_name
    probes = replace(
        probes,
        heads=tuple(_default_heads()) if probes.heads is None else probes.heads,
        layers=features.layers if probes.layers is None else probes.layers,
    )
    for i, layer in enumerate(probes.layers):
        for part in layer_parts(layer):  # "pooled+blocks.5:avg" reads both
            if part not in features.layers:
                raise ConfigError(
                    f"probes.layers[{i}]: layer {part!r} is not extracted."
                    f"{did_you_mean(part, features.layers)} Add it to features.layers "
                    f"({', '.join(features.layers)})."
                )
    if not (probes.heads and probes.layers) and not finetune.modes:
        empty = "probes.heads" if not probes.heads else "probes.layers"
        raise ConfigError(
            f"The pipeline runs no method: {empty} is empty and finetune.modes is empty. "
            f"Add a head ({', '.join(_head_names())}) on a layer ("
            f"{', '.join(features.layers)}) or a fine-tuning mode (e.g. 'full')."
        )
    if finetune.modes and finetune.backbones == ():
        raise ConfigError(
            "finetune.backbones is empty, so finetune.modes would run nothing. List a backbone, "
            "or leave the key out to fine-tune features.backbones."
        )
    finetune = replace(
        finetune,
        backbones=features.backbones if finetune.backbones is None else finetune.backbones,
        image_size=features.image_size if finetune.image_size is None else finetune.image_size,
    )
    out = _expand(config.out, "out") if config.out else f"runs/{name}"
    source = replace(config.source, data=_expand(config.source.data, "source.data"))
    features = replace(features, cache_dir=_expand(features.cache_dir, "features.cache_dir"))
    return replace(
        config,
        name=name,
        out=out,
        source=source,
        features=features,
        probes=probes,
        finetune=finetune,
    )


def _expand(path: str, where: str) -> str:
    """``~`` and ``$VAR`` in a path key, expanded: else a folder named '~' or '$SCRATCH' was
    made in the working directory. A variable that is not set is refused, unless a file of
    that very name exists."""
    expanded = os.path.expanduser(os.path.expandvars(path))
    unset = re.search(r"\$\{?(\w+)", expanded)  # expandvars leaves those as they are
    if unset and not Path(expanded).exists():
        raise ConfigError(
            f"{where} = {path!r}: environment variable ${unset[1]} is not set. Set it, or "
            "write the path in full."
        )
    return expanded
