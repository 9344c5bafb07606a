"""Helpers shared by the backbone families: weights from local files, deterministic random
init, offline-download errors, and the list of a network's stages."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from featpipe.backbones.base import last_linear
from featpipe.errors import ConfigError, FeaturePipeError
from featpipe.words import listed

STATE_DICT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
# The key suffix under which a module's get_extra_state() is saved in its state dict.
_EXTRA_STATE = "_extra_state"
# How a spec's '@weights' part is told apart from a tag such as DEFAULT or pretrained.
PATH_RULE = (
    "A weights path contains a '/' or ends in "
    f"{', '.join(STATE_DICT_SUFFIXES[:-1])} or {STATE_DICT_SUFFIXES[-1]}; anything else is a "
    "weights name, even where a file of that name exists (write ./<name> for a file in "
    "this folder)."
)


class WeightsUnavailableError(FeaturePipeError, OSError):
    """Pretrained weights could not be fetched or are not installed."""


def is_weights_path(weights: str) -> bool:
    """Whether a spec's ``@weights`` part names a local weights file rather than a tag, by
    its text alone (:data:`PATH_RULE`): a file named like a tag in the current folder does
    not turn the tag into a path."""
    return weights.lower().endswith(STATE_DICT_SUFFIXES) or "/" in weights or os.sep in weights


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a plain state dict safely, on CPU: a ``.safetensors`` file with safetensors,
    any other with ``torch.load(weights_only=True)``."""
    path = Path(path).expanduser()
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise ConfigError(
            f"Weights file {str(path)!r} {what}. Give the path of a state-dict file "
            f"({', '.join(STATE_DICT_SUFFIXES)}), a weights name, or 'none' for random init."
        )
    safetensors = path.suffix.lower() == ".safetensors"
    try:
        if safetensors:
            from safetensors.torch import load_file

            state = load_file(path, device="cpu")
        else:
            state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # pickle/zip/header errors have many types; keep the cause
        how = "safetensors" if safetensors else "torch.load(weights_only=True)"
        fix = (
            "Save weights with torch.save(model.state_dict(), path) or, for a .safetensors "
            "file, safetensors.torch.save_file(model.state_dict(), path)."
        )
        if "Unsupported global" in str(exc):  # objects beside the tensors (a checkpoint)
            fix = (
                "It holds objects other than tensors, which featpipe does not unpickle: if "
                "you trust the file, load it with torch.load(path, weights_only=False) and "
                "save its state dict alone with torch.save(state_dict, path)."
            )
        raise ConfigError(
            f"Could not read {str(path)!r} as a state dict with {how}: "
            f"{_read_cause(path, exc, safetensors)}. {fix}"
        ) from exc
    if not _is_state_dict(state):
        # a training checkpoint keeps the state dict under a key ('state_dict', 'model')
        inner = (
            [k for k, v in state.items() if _is_state_dict(v)] if isinstance(state, Mapping) else []
        )
        hint = (
            f" Its entry {inner[0]!r} is a state dict (a training checkpoint?): save that "
            f"alone, torch.save(checkpoint[{inner[0]!r}], path)."
            if inner
            else " Save weights with torch.save(model.state_dict(), path)."
        )
        raise ConfigError(
            f"{str(path)!r} holds a {type(state).__name__}, not a state dict of tensors.{hint}"
        )
    return dict(state)


def _read_cause(path: Path, exc: BaseException, safetensors: bool) -> str:
    """Why a weights file did not load: torch.load says only 'EOFError()' of an empty file
    and 'KeyError(101)' of a text file (an HTML page saved in place of the weights)."""
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        return "the file is empty (0 bytes)"
    # torch.save writes a zip archive (PK) or, in its legacy format, a pickle (0x80)
    if not safetensors and not head.startswith((b"PK", b"\x80")):
        return f"it is not a file torch.save wrote (it begins {head!r})"
    cause = one_line_cause(exc).rstrip(".")
    return cause if any(c.isalpha() for c in cause) else f"{type(exc).__name__} {cause}".strip()


def one_line_cause(exc: BaseException, limit: int = 300) -> str:
    """A library's error text as one line of at most ``limit`` characters: torch.load's
    weights-only error spans paragraphs (its cause: the unsupported global it names) and a
    strict load's lists every missing key."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # terminal colours
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    cause = f"unsupported global {found.group(1)}" if found else " ".join(text.split())
    return cause if len(cause) <= limit else cause[:limit] + "…"


def _is_state_dict(value: object) -> bool:
    """A mapping of names to tensors, but for modules' extra state (any object)."""
    return (
        isinstance(value, Mapping)
        and len(value) > 0
        and all(
            isinstance(k, str) and (isinstance(v, torch.Tensor) or k.endswith(_EXTRA_STATE))
            for k, v in value.items()
        )
    )


def _reshaped(state: Mapping[str, object], expected: Mapping[str, object]) -> list[str]:
    """The keys of ``expected`` whose tensor in ``state`` has another shape; a module's extra
    state (``get_extra_state``: any object) has none, and its own set_extra_state checks it."""
    return [
        k
        for k, v in expected.items()
        if isinstance(v, torch.Tensor)
        and isinstance(state.get(k), torch.Tensor)
        and state[k].shape != v.shape
    ]


def _few(keys: Iterable[str], n: int = 5) -> str:
    return listed(map(repr, sorted(keys)), n)


def load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with an error that names the differing keys."""
    expected = model.state_dict()
    given, state = state, _with_counters(state, expected)
    missing = expected.keys() - state.keys()
    unexpected = state.keys() - expected.keys()
    reshaped = [
        f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
        for k in _reshaped(state, expected)
    ]
    if missing or unexpected or reshaped:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_few(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_few(unexpected)})")
        if reshaped:
            parts.append(f"{len(reshaped)} shape mismatches ({listed(reshaped, sep='; ')})")
        prefix = _wrapper_prefix(given.keys(), expected.keys())  # not our counters
        fix = (
            f"Every key in it starts with {prefix!r}, as in a state dict saved from a wrapper "
            "(DistributedDataParallel, torch.compile, a training framework): save the inner "
            "model's state dict, or strip the prefix with torch.save({k.removeprefix("
            f"{prefix!r}): v for k, v in state.items()}}, path)."
            if prefix
            else "Check that the file was saved from the same architecture."
        )
        raise ConfigError(
            f"The state dict from {source} does not fit {type(model).__name__}: "
            f"{', '.join(parts)}. {fix}"
        )
    model.load_state_dict(state, strict=True)


def _with_counters(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``state`` with the batch norms' step counters it leaves out taken from ``expected``:
    files converted or filtered often drop them (torch's own strict load allows it), and they
    only count training steps."""
    counters = {k for k in expected.keys() - state.keys() if k.endswith(".num_batches_tracked")}
    return {**state, **{k: expected[k] for k in counters}}


def _wrapper_prefix(keys: Iterable[str], expected: Iterable[str]) -> str | None:
    """The prefix ('module.', '_orig_mod.', 'model.') that every key in ``keys`` has and
    that, stripped, leaves most of them ``expected`` keys; None if there is none."""
    keys, expected = list(keys), set(expected)
    head = keys[0].split(".")[:-1] if keys else []
    for i in range(1, len(head) + 1):
        prefix = ".".join(head[:i]) + "."
        if not all(k.startswith(prefix) for k in keys):
            break
        if 2 * len({k[len(prefix) :] for k in keys} & expected) > len(expected):
            return prefix
    return None


def _other_class_count(model: nn.Module, state: Mapping[str, torch.Tensor]) -> int | None:
    """The number of classes of a state dict that fits ``model`` but for its classifier (its
    last Linear) sized for other classes, or None."""
    expected = model.state_dict()
    state = _with_counters(state, expected)
    classifier = last_linear(model)
    if classifier is None or state.keys() != expected.keys():
        return None
    reshaped = set(_reshaped(state, expected))
    ours = {f"{classifier}.weight", f"{classifier}.bias"}
    sizes = {state[k].shape[0] for k in reshaped}
    fits = all(state[k].shape[1:] == expected[k].shape[1:] for k in reshaped)
    return sizes.pop() if reshaped and reshaped <= ours and len(sizes) == 1 and fits else None


def seeded(build: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    """Build a randomly initialised model reproducibly, leaving the global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def build_from_file(build: Callable[..., nn.Module], weights: str) -> tuple[nn.Module, str, str]:
    """The architecture from ``build`` with a local state-dict file loaded strictly; returns
    the model, the file's sha256 and its absolute path (the spec's resolved weights). A file
    whose classifier has another number of classes (a fine-tuned network) gets an
    architecture built with that many (``build(num_classes=N)``)."""
    path = Path(weights).expanduser().resolve()
    state = read_state_dict(path)
    model = seeded(build)
    classes = _other_class_count(model, state)
    if classes is not None:
        model = seeded(lambda: build(num_classes=classes))
    load_strict(model, state, source=str(path))
    return model, file_sha256(path), str(path)


def fetch_error(what: str, exc: BaseException, fixes: str) -> WeightsUnavailableError:
    """The error for hub weights that could not be downloaded (offline machines)."""
    return WeightsUnavailableError(
        f"Could not fetch {what} ({type(exc).__name__}: {exc}). This machine may be offline. "
        f"{fixes} Or append '@none' to the spec for random init."
    )


_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


def stages_of(
    model: nn.Module, expand: Iterable[str] = (), exclude: str | None = None
) -> list[tuple[str, ...]]:
    """A network's stages in forward order, for partial fine-tuning: each a tuple of module
    or parameter names.

    The parts are the model's top-level children that hold parameters (except the one holding
    the classifier ``exclude``), and its own parameters (a ViT's class token and position
    embedding). A child named in ``expand`` (a container of blocks such as ``features`` or
    ``blocks``, dotted for a nested one such as ``encoder.layers``) contributes its children
    instead, and a child on the way to one is opened the same way. Parts are then grouped:
    a normalisation layer or a parameter joins the stage before it, and everything up to the
    second module that is not a normalisation layer forms stage 0, the stem (ResNet's conv1 +
    bn1; a ViT's patch embedding, class token and position embedding). Assumes children are
    registered in forward order, as in torchvision and timm.
    """
    head = exclude.split(".")[0] if exclude else None
    stages: list[list[str]] = [[]]
    has_module = False
    for name, part in _parts(model, "", set(expand), head):
        if isinstance(part, nn.Module) and not isinstance(part, _NORMS):
            if has_module:
                stages.append([])
            has_module = True
        stages[-1].append(name)
    return [tuple(stage) for stage in stages if stage]


def _parts(
    module: nn.Module, prefix: str, expand: set[str], head: str | None
) -> Iterable[tuple[str, nn.Module | nn.Parameter]]:
    """(name, parameter or module) of ``module``'s own parameters, then of its children
    (opening those in ``expand`` and those on the way to one), in registration order."""
    for name, p in module.named_parameters(prefix=prefix.rstrip("."), recurse=False):
        yield name, p
    for name, child in module.named_children():
        full = prefix + name
        if full == head or next(child.parameters(), None) is None:
            continue
        if full in expand:
            for sub, block in child.named_children():
                if next(block.parameters(), None) is not None:
                    yield f"{full}.{sub}", block
        elif any(e.startswith(full + ".") for e in expand):
            yield from _parts(child, full + ".", expand, head)
        else:
            yield full, child
