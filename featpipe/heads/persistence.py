"""Save a fitted head, with a JSON sidecar that ties it to the features it expects.

``.skops`` files (the ``skops`` extra) are loaded without running code: only the types on
:data:`SKOPS_TRUSTED` (featpipe's heads and the parts of scikit-learn they hold, which skops
trusts itself) are rebuilt, and any other type refuses the file. Any other name is a joblib
pickle, which can run arbitrary code when loaded, so loading one warns.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import warnings
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import joblib
from sklearn.base import BaseEstimator
from sklearn.exceptions import InconsistentVersionWarning

from featpipe.atomic import sync_file, sync_placed
from featpipe.backbones.weights import file_sha256
from featpipe.errors import ConfigError, HeadMismatchError, UntrustedFileError
from featpipe.extras import import_extra
from featpipe.heads.estimators import KNNProbe, LinearSVMProbe, LogisticProbe, MLPProbe, RBFSVMProbe
from featpipe.heads.faiss_knn import FaissKNeighborsClassifier, FaissKNNProbe
from featpipe.heads.nystroem import NystroemClassifier, NystroemSVMProbe
from featpipe.heads.registry import head_name
from featpipe.heads.splits import LAYER_JOIN, layer_parts
from featpipe.heads.streamed_logreg import StreamingLogisticProbe
from featpipe.heads.streaming import StreamingLinearHead
from featpipe.heads.torch_logreg import TorchLogisticRegression
from featpipe.heads.torch_mlp import TorchMLPClassifier
from featpipe.heads.torch_svm import TorchLinearSVC
from featpipe.provenance import plain, versions
from featpipe.words import agrees

SIDECAR_FORMAT = "featpipe.head"
# 2: records the stored layer's pooling, width and dtype ("features").
# 3: records the head file's sha256 ("file_sha256"), so a file from another save is refused,
#    and the backbone's whole identity (token pooling, Swin's turned layers, ...), checked whole.
# 4: records how the store computed its features ("compute": decode path and precision), so
#    that featpipe predict on images decodes them as the store did.
SIDECAR_VERSION = 4
# What sidecars before version 3 recorded of the backbone.
_BACKBONE_KEYS = ("spec", "weights_sha256", "preprocessing")
# What sidecars since version 2 record of the stored layer ("features"), always checked.
_FEATURE_KEYS = ("layer", "dim", "pooling", "dtype")
_NO_STORE = {
    "store_key": None,
    "store_path": None,
    "backbone": None,
    "compute": None,
    "features": None,
}
SKOPS_SUFFIX = ".skops"
RESAVE = "Save the head again (featpipe probe --save-dir, or save_head) to rewrite it."
# What unpickling a truncated or overwritten file raises (a damaged opcode, length or frame).
_DAMAGED_PICKLE = (EOFError, pickle.UnpicklingError, KeyError, IndexError, ValueError, struct.error)

# The types a .skops head file may hold beyond those skops trusts by default (numpy,
# scikit-learn estimators): featpipe's heads, and the optimiser state MLPClassifier keeps.
SKOPS_TRUSTED: tuple[str, ...] = (
    *(
        f"{cls.__module__}.{cls.__qualname__}"
        for cls in (
            FaissKNeighborsClassifier,
            FaissKNNProbe,
            KNNProbe,
            LinearSVMProbe,
            LogisticProbe,
            MLPProbe,
            NystroemClassifier,
            NystroemSVMProbe,
            RBFSVMProbe,
            StreamingLinearHead,
            StreamingLogisticProbe,
            TorchLinearSVC,
            TorchLogisticRegression,
            TorchMLPClassifier,
        )
    ),
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
    "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
)


def sidecar_path(path: str | Path) -> Path:
    """``head.joblib`` -> ``head.joblib.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def _store_provenance(store: object) -> dict:
    attrs = dict(getattr(store, "attrs", {}) or {})
    backbone = attrs.get("backbone") or {}
    if isinstance(backbone, str):
        backbone = json.loads(backbone)
    compute = attrs.get("compute")  # None for stores made before it was recorded
    if isinstance(compute, str):
        compute = json.loads(compute)
    return {
        "compute": compute,
        "store_key": getattr(store, "key", attrs.get("key")),
        "store_path": str(getattr(store, "path", "")),
        "backbone": {
            **backbone,  # the whole identity (Backbone.identity()) the store was keyed by
            "spec": backbone.get("spec"),
            "weights_sha256": backbone.get("weights_sha256", attrs.get("weights_sha256")),
            "preprocessing": backbone.get("preprocessing", attrs.get("preprocessing")),
        },
    }


def _features(store: object, layer: str | None) -> dict | None:
    """What the head's inputs depend on besides the backbone: the stored layer's pooling,
    width and dtype (float16 features differ from float32 ones)."""
    if layer is None or layer not in getattr(store, "layers", ()):
        return None
    return {"layer": layer, **{k: plain(v) for k, v in store.layer_info(layer).items()}}


def _same(a: object, b: object) -> bool:
    """Equality of JSON-like values, whether they came from JSON (lists) or not (tuples)."""
    return json.dumps(plain(a), sort_keys=True) == json.dumps(plain(b), sort_keys=True)


def save_head(
    head: BaseEstimator,
    path: str | Path,
    *,
    store: object = None,
    layer: str | None = None,
    selection: object = None,
) -> Path:
    """Write ``path`` and ``<path>.json``: store key, backbone spec, weights sha and
    preprocessing, how the store computed its features (decode path, precision), the layer
    (pooling, width, dtype), classes, the head's preprocessing, the chosen hyper-parameters
    and library versions. A path ending in ``.skops`` is written with
    skops (safe to load), any other with joblib."""
    if not hasattr(head, "classes_"):
        raise ConfigError(f"Only a fitted head can be saved; {type(head).__name__} is not fitted.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    params = head.get_params(deep=False)
    sidecar = {
        "format": SIDECAR_FORMAT,
        "format_version": SIDECAR_VERSION,
        "file_format": _file_format(path),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "head": head_name(head) or type(head).__name__,
        "estimator": f"{type(head).__module__}.{type(head).__qualname__}",
        "params": plain(params),
        "preprocessing": {"preprocess": params.get("preprocess"), "pca": params.get("pca")},
        "layer": layer,
        "n_features": getattr(head, "n_features_in_", None),
        "class_labels": plain(head.classes_),
        "classes": list(store.classes) if store is not None else plain(head.classes_),
        "hyperparameters": plain(getattr(selection, "params", None)),
        "val_accuracy": getattr(selection, "val_accuracy", None),
        "test_accuracy": getattr(selection, "test_accuracy", None),
        "versions": versions(),
        **(
            {**_store_provenance(store), "features": _features(store, layer)}
            if store is not None
            else _NO_STORE
        ),
    }
    # Both files are written whole under temporary names first, so an interrupted save leaves
    # the previous pair as it was; were it stopped between the two renames, the sidecar's
    # sha256 tells load_head that the files do not belong together.
    tmp, side_tmp = _tmp(path), _tmp(sidecar_path(path))
    try:
        if _file_format(path) == "skops":
            import_extra("skops.io", "skops", "Saving a .skops head").dump(head, tmp)
        else:
            joblib.dump(head, tmp)
        sidecar["file_sha256"] = file_sha256(tmp)
        side_tmp.write_text(json.dumps(sidecar, indent=2) + "\n")
        sync_file(tmp)  # on disk before their names: a power cut then leaves no empty file
        sync_file(side_tmp)
        tmp.replace(path)
        side_tmp.replace(sidecar_path(path))
    finally:
        tmp.unlink(missing_ok=True)
        side_tmp.unlink(missing_ok=True)
    sync_placed(path)  # both names, one folder; after the try: the pair is in place
    return path


def _tmp(path: Path) -> Path:
    """A temporary name beside ``path``, one per process (two saves never share one)."""
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


def read_sidecar(path: str | Path) -> dict:
    """The JSON sidecar of a saved head (``<path>.json``)."""
    side = sidecar_path(path)
    if not side.exists():
        raise ConfigError(f"{side} is missing; a head saved by featpipe has a JSON sidecar.")
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except ValueError as err:  # not JSON, or not UTF-8 text
        raise ConfigError(f"{side} is not a readable head sidecar ({err}). {RESAVE}") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{side} is not a readable head sidecar: it holds a JSON {type(data).__name__}, "
            f"not an object. {RESAVE}"
        )
    if data.get("format") != SIDECAR_FORMAT:
        raise ConfigError(f"{side} is not a featpipe head sidecar (format={data.get('format')!r}).")
    version = data.get("format_version")
    if not isinstance(version, int) or version > SIDECAR_VERSION:
        # A newer sidecar may record what this featpipe cannot check.
        raise ConfigError(
            f"{side} has head sidecar format version {version!r}; this featpipe reads up to "
            f"{SIDECAR_VERSION}. Upgrade featpipe ({versions().get('featpipe')} here, "
            f"{(data.get('versions') or {}).get('featpipe')} saved it)."
        )
    return data


def load_head(path: str | Path, trusted: tuple[str, ...] = ()) -> tuple[BaseEstimator, dict]:
    """(fitted head, sidecar dict). A ``.skops`` file is rebuilt without running code from
    the types on :data:`SKOPS_TRUSTED` plus ``trusted`` (module.Class names, for heads of your
    own); another type in it raises UntrustedFileError. Other files are loaded with joblib,
    which runs code while loading (it warns): load trusted files only.

    A head saved with another scikit-learn, featpipe or (for a head holding torch objects)
    torch than this one's, as its sidecar records them (local labels such as "+cu121" aside),
    warns in one line naming both versions, since it may predict otherwise; one whose classes
    this environment lacks is refused in one line naming them."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(_no_head_text(path))
    sidecar = read_sidecar(path)
    other = _other_versions(sidecar)
    with warnings.catch_warnings():
        if "scikit-learn" in other:  # said below in one line: not again in scikit-learn's
            warnings.filterwarnings("ignore", category=InconsistentVersionWarning)
        try:
            head = _load(path, trusted)
        except (ImportError, AttributeError) as err:  # a class this version does not have
            if not other:
                raise
            text = _versions_text(path, other, "cannot be loaded here")
            raise ConfigError(f"{text} ({type(err).__name__}: {err})") from None
    if not _holds_torch(head):  # fitted in torch or not, it predicts without torch
        other.pop("torch", None)
    if other:
        warnings.warn(
            _versions_text(path, other, "may predict otherwise"), UserWarning, stacklevel=2
        )
    if "file_sha256" in sidecar and file_sha256(path) != sidecar["file_sha256"]:
        raise ConfigError(
            f"{path} is not the file its sidecar {sidecar_path(path)} describes (their sha256 "
            "differ): one of them was replaced or changed after the save, or a save was "
            f"interrupted between writing the two. {RESAVE}"
        )
    if not (hasattr(head, "predict") and hasattr(head, "classes_")):
        raise ConfigError(
            f"{path} holds a {type(head).__name__}, not a fitted classifier (one with predict "
            f"and classes_). {RESAVE}"
        )
    if fitted_on := _fitted_on(sidecar):  # named when given features of another width
        head.fitted_on_ = (sidecar.get("n_features"), fitted_on)
    return head, sidecar


def _fitted_on(sidecar: dict) -> str | None:
    """The features a saved head was fitted on, in words ("layer 'pooled' of the backbone
    'efficientnet_lite0' at image size 64"), as far as its sidecar records them."""
    layer, backbone = sidecar.get("layer"), sidecar.get("backbone") or {}
    if not isinstance(layer, str) or not isinstance(backbone, dict):
        return None
    text = f"layer {layer!r}"
    if backbone.get("spec"):
        text += f" of the backbone {backbone['spec']!r}"
    crop = (backbone.get("preprocessing") or {}).get("crop")
    return f"{text} at image size {crop}" if crop else text


def _no_head_text(path: Path) -> str:
    """What a missing head path gets: the heads saved beside it, or that its folder is
    missing, and how to save one."""
    folder = path.parent
    if not folder.is_dir():
        there = f"there is no folder {folder}"
    else:
        heads = saved_heads(folder)
        there = f"{folder} holds {', '.join(heads)}" if heads else f"{folder} holds no saved head"
    return (
        f"No saved head at {path} ({there}). Give a head saved by save_head(head, path, "
        "store=store, layer=layer) or by `featpipe probe STORE --save-dir DIR` "
        "(DIR/logreg.skops), or save one first."
    )


def saved_heads(folder: Path) -> list[str]:
    """The names of the head files in ``folder`` (.skops and .joblib, any case), sorted."""
    return sorted(p.name for p in folder.iterdir() if p.suffix.lower() in (".skops", ".joblib"))


# The libraries whose versions decide how a saved head loads and predicts.
_HEAD_LIBRARIES = ("scikit-learn", "torch", "featpipe")


def _other_versions(sidecar: dict) -> dict[str, tuple[str, str]]:
    """{library: (version saved with, version here)} for those of _HEAD_LIBRARIES whose public
    versions differ (a library the sidecar or this environment lacks is left out)."""
    saved, here = sidecar.get("versions") or {}, versions()
    if not isinstance(saved, dict):
        return {}
    return {
        name: (str(saved[name]), here[name])
        for name in _HEAD_LIBRARIES
        if saved.get(name) and here.get(name) and _public(str(saved[name])) != _public(here[name])
    }


def _public(version: str) -> str:
    """``version`` without its local label: "2.4.1+cu121" is torch 2.4.1 built for CUDA 12.1,
    which computes as 2.4.1 does, and PyPI installs "2.4.1" only."""
    return version.split("+", 1)[0]


def _holds_torch(head: object) -> bool:
    """Whether a torch object (a tensor, a module) is among ``head``'s attributes, at any
    depth: only such a head may predict otherwise under another torch. featpipe's heads fitted
    in torch keep numpy arrays."""
    todo, seen = [head], set()
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if type(obj).__module__.split(".")[0] == "torch":
            return True
        if isinstance(obj, dict):
            todo.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            todo.extend(obj)
        elif type(obj).__module__ != "builtins" and hasattr(obj, "__dict__"):  # instances only
            todo.extend(vars(obj).values())
    return False


def _versions_text(path: Path, other: dict[str, tuple[str, str]], what: str) -> str:
    """One line naming both versions of each library in ``other``, and the fix."""
    pairs = ", ".join(f"{name} {then} (here {now})" for name, (then, now) in other.items())
    pins = " ".join(f"{name}=={_public(then)}" for name, (then, _) in other.items())
    return (
        f"{path} was saved with {pairs}: a head saved by other library versions {what}. "
        f"Fit and save it again here (featpipe probe --save-dir), or pip install {pins}"
    )


def _load(path: Path, trusted: tuple[str, ...]) -> object:
    if _file_format(path) == "skops":
        return _load_skops(path, trusted)
    warnings.warn(
        f"Loading {path} with joblib, which can run arbitrary code on load: only load head "
        f"files from a source you trust. Heads saved as {SKOPS_SUFFIX} load safely.",
        UserWarning,
        stacklevel=3,
    )
    try:
        return joblib.load(path)
    except _DAMAGED_PICKLE as err:  # not missing code (ModuleNotFoundError etc.): that is raised
        raise ConfigError(
            f"{path} is not a readable .joblib head file: it is truncated or damaged "
            f"({type(err).__name__}: {err}). {RESAVE}"
        ) from err


def _file_format(path: Path) -> str:
    return "skops" if path.suffix.lower() == SKOPS_SUFFIX else "joblib"


def _load_skops(path: Path, trusted: tuple[str, ...]) -> BaseEstimator:
    sio = import_extra("skops.io", "skops", f"Loading the head {path}")
    allowed = [*SKOPS_TRUSTED, *trusted]
    try:
        # Checked before loading: skops refuses them too, but only once it is building them.
        untrusted = sorted(set(sio.get_untrusted_types(file=path)) - set(allowed))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:  # not a skops archive
        raise ConfigError(f"{path} is not a readable .skops head file ({err}). {RESAVE}") from None
    if untrusted:
        raise UntrustedFileError(
            f"{path} holds {agrees(len(untrusted), 'a type', 'types')} that featpipe does not "
            f"trust: {', '.join(untrusted)}. "
            "Nothing in it was run. If you made this file and trust these types, pass them as "
            "load_head(path, trusted=[...]); otherwise do not use it."
        )
    return sio.load(path, trusted=allowed)


def check_head_matches(sidecar: dict, store: object, layer: str) -> None:
    """Raise HeadMismatchError when ``store``/``layer`` are not the features the head was
    trained on: another backbone spec, weights or preprocessing (image size and crop among
    it) or, for sidecars of version 3 on, any other part of its identity (token pooling,
    Swin's turned layers), another layer, pooling, width or dtype, or another class list.

    Sidecars written before pooling and dtype were recorded (format version 1) are checked
    on what they hold, with a warning that names what cannot be checked."""
    _require_one_layer(sidecar)
    provenance = _store_provenance(store)
    problems = _backbone_problems(sidecar, provenance["backbone"], "store")
    if sidecar.get("layer") != layer:
        problems.append(f"layer: head {sidecar.get('layer')!r}, requested {layer!r}")
    elif layer not in store.layers:
        problems.append(
            f"layer: head {layer!r}, not in the store (it holds {', '.join(store.layers)})"
        )
    elif "features" not in sidecar:
        warnings.warn(
            f"This head's sidecar (format version {sidecar.get('format_version')}) does not "
            "record the pooling, width and dtype of its features, so they are not checked. "
            "Save the head again with this featpipe to record them.",
            UserWarning,
            stacklevel=2,
        )
    elif keys := _features_differing(sidecar["features"] or {}, now := _features(store, layer)):
        was, is_ = ({k: d.get(k) for k in keys} for d in (sidecar["features"], now))
        problems += _apart("features", was, is_, "store")
    if list(sidecar.get("classes") or []) != list(store.classes):
        problems.append(f"classes: head {sidecar.get('classes')}, store {list(store.classes)}")
    _require_same_spec(sidecar, provenance["backbone"], "the store's are")
    _raise_mismatch(problems)
    warn_other_compute(sidecar, provenance["compute"], "the store's were")


def warn_other_compute(sidecar: dict, now: object, where: str) -> None:
    """Warn when features given to a head were computed otherwise than its store's (another
    decode path or precision: a ``--decode fast`` store, a store extracted on CUDA): the same
    model on other pixels or in other rounding, so predictions differ a little, not refused.
    Nothing is said where either side does not record it."""
    saved = sidecar.get("compute")
    if isinstance(saved, dict) and isinstance(now, dict) and not _same(saved, now):
        warnings.warn(
            f"This head was trained on features computed with {saved}; {where} computed with "
            f"{now}, so probabilities differ a little from those on its store. For the same "
            "numbers, compute features as its store did (the same decode and device).",
            UserWarning,
            stacklevel=3,
        )


def _features_differing(saved: dict, now: dict) -> list[str]:
    """The fields in which a stored layer differs from the one a head was fitted on: of those
    every sidecar since version 2 records, and any other both sides record. A field only one
    side knows (added by another featpipe version) is no difference: comparing the whole dict
    refused every valid head over such a field."""
    keys = [*_FEATURE_KEYS, *sorted((set(saved) & set(now)) - set(_FEATURE_KEYS))]
    return [key for key in keys if not _same(saved.get(key), now.get(key))]


def check_backbone_matches(sidecar: dict, identity: dict) -> None:
    """Raise HeadMismatchError when the backbone that computes features for the head now
    (``identity``: ``Backbone.identity()``) differs from the one behind the head's store, as
    check_head_matches compares them (a featpipe that preprocesses the model otherwise)."""
    _require_one_layer(sidecar)
    _require_same_spec(sidecar, identity, "these are")
    _raise_mismatch(_backbone_problems(sidecar, identity, "backbone here"))


def _require_one_layer(sidecar: dict) -> None:
    """Refuse a head fitted on joined layers (``pooled+blocks.5:avg``): each part was
    standardised with the train statistics of the store it was fitted on, which the head file
    does not hold, so no features given to it later are the ones it learnt from (the layer
    check called such a head's layers missing from the very store it was fitted on)."""
    layer = sidecar.get("layer")
    if isinstance(layer, str) and len(layer_parts(layer)) > 1:
        first = layer.split(LAYER_JOIN)[0].strip()
        raise HeadMismatchError(
            f"This head was fitted on the joined layers {layer!r}, each standardised with the "
            "train statistics of its store, which the head file does not hold; featpipe cannot "
            "give it those features again. To predict, fit and save a head on one stored "
            # The command that fits heads is not the one that predicts: both words given.
            f'layer (e.g. layer="{first}"; CLI: --layer {first}).'
        )


def _require_same_spec(sidecar: dict, now: dict, theirs: str) -> None:
    """Refuse features of another backbone in one short line: its weights, preprocessing
    and widths differ too, and listing them all hid the one fix."""
    spec, other = (sidecar.get("backbone") or {}).get("spec"), now.get("spec")
    if spec and other and spec != other:
        raise HeadMismatchError(
            f"This head was trained on features of the backbone {spec!r}; {theirs} of "
            f"{other!r}. Predict on a store extracted with `featpipe extract ... --backbone "
            f"{spec}`, or train a head on this one with `featpipe probe STORE --save-dir DIR`."
        )


def _backbone_problems(sidecar: dict, now: dict, where: str) -> list[str]:
    saved = sidecar.get("backbone") or {}
    keys = list(_BACKBONE_KEYS)
    if (sidecar.get("format_version") or 0) >= 3:  # older ones recorded only these
        keys += sorted((set(saved) | set(now)) - set(keys))
    return [
        problem
        for key in keys
        if not _same(saved.get(key), now.get(key))
        for problem in _apart(f"backbone {key}", saved.get(key), now.get(key), where)
    ]


def _apart(name: str, a: object, b: object, where: str) -> list[str]:
    """How ``a`` (the head's) and ``b`` differ, in words: of two dicts each key that differs
    on its own ("backbone preprocessing crop: head 32, store 64"; a preprocessing dict is
    long), a sha256 by its first 12 digits."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = [k for k in {**a, **b} if not _same(a.get(k), b.get(k))]
        return [f"{name} {k}: head {_short(a.get(k))}, {where} {_short(b.get(k))}" for k in keys]
    return [f"{name}: head {_short(a)}, {where} {_short(b)}"]


def _short(value: object) -> str:
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return repr(value[:12] + "...")
    return repr(value)


def _raise_mismatch(problems: list[str]) -> None:
    if problems:
        raise HeadMismatchError(
            "This head was trained on other features: "
            + "; ".join(problems)
            + ". Extract features with the head's backbone, image size, layer and dtype, or "
            "train a new head."
        )
