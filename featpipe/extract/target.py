"""Decide what to do with the store file an extraction asks for: reuse, resume, or create."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import h5py

from featpipe.errors import FeaturePipeError, StoreMismatchError
from featpipe.store import FeatureStore, store_key
from featpipe.store.files import NOT_HDF5
from featpipe.store.reader import part_text


class Action(Enum):
    REUSE = "reuse"  # complete store with the same key: nothing to compute
    RESUME = "resume"  # incomplete store with the same key: write the missing chunks
    CREATE = "create"  # no store there (or overwrite): lay out a new one


@dataclass(frozen=True)
class Request:
    """Every input that changes features, as asked for by this call."""

    key: str
    source_fingerprint: str
    backbone: dict  # Backbone.identity(): spec, weights_sha256, preprocessing
    layers: list[str]
    dtype: str
    compute: dict  # loop.compute_identity(): precision and decode path

    @classmethod
    def build(
        cls, source_fingerprint: str, backbone: dict, layers: list[str], dtype: str, compute: dict
    ) -> Request:
        key = store_key(source_fingerprint, backbone, layers, dtype, compute)
        return cls(key, source_fingerprint, backbone, list(layers), dtype, dict(compute))

    def store_attrs(self, source_description: dict) -> dict:
        """The provenance attributes of a new store made for this request."""
        return {
            "key": self.key,
            "backbone": self.backbone,
            "weights_sha256": self.backbone["weights_sha256"],
            "preprocessing": self.backbone["preprocessing"],
            "source_fingerprint": self.source_fingerprint,
            "source": source_description,
            "compute": self.compute,
        }

    def as_attrs(self) -> dict:
        """The same inputs as stored in a store's attributes."""
        return {
            "spec": self.backbone["spec"],
            "weights_sha256": self.backbone["weights_sha256"],
            "preprocessing": self.backbone["preprocessing"],
            "source_fingerprint": self.source_fingerprint,
            "layers": sorted(self.layers),
            "dtype": self.dtype,
            "compute": self.compute,
        }


def _stored_inputs(store: FeatureStore) -> dict:
    attrs = store.attrs
    return {
        "spec": store.attr_object("backbone").get("spec"),  # a damaged file's: one line
        "weights_sha256": attrs.get("weights_sha256"),
        "preprocessing": attrs.get("preprocessing"),
        "source_fingerprint": attrs.get("source_fingerprint"),
        "layers": sorted(attrs.get("layers", [])),
        "dtype": attrs.get("dtype"),
        "compute": attrs.get("compute"),
    }


def _short(value: object) -> str:
    if value is None:
        return "nothing (not recorded by the featpipe that made it)"
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return repr(text if len(text) <= 80 else text[:77] + "...")


def reusable(path: Path, request: Request, overwrite: bool) -> FeatureStore | None:
    """The complete store of this request at ``path``, read without taking its lock (a
    complete store is never written again); None for anything else, decided under the lock."""
    if overwrite or not path.is_file():
        return None
    try:
        store = FeatureStore(path)
        mine = store.key == request.key and not store.is_part
        return store if mine and store.complete else None
    except (FeaturePipeError, OSError):
        return None


def plan(path: Path, request: Request, overwrite: bool) -> Action:
    """The action for ``path``, to decide while holding the store's lock; raises
    StoreMismatchError when a store made from other inputs (or a file that is not a store:
    UnreadableStoreError) is there and ``overwrite`` is False."""
    if not path.exists() or overwrite:
        return Action.CREATE
    fix = "Pass overwrite=True (--overwrite) to replace it, or write to another path."
    # The user's own file (an image, a manifest), or a store cut short at its start.
    if path.is_file() and not h5py.is_hdf5(path):
        raise StoreMismatchError(f"{path} is there and is not a featpipe store ({NOT_HDF5}). {fix}")
    store = FeatureStore(path)  # a damaged or foreign HDF5 file raises, saying so
    if part := store.part_of():  # its parent's key, and only its rows
        raise StoreMismatchError(
            f"{path} is {part_text(path, part)}, and holds only those rows: extract to the "
            "parted store's top-level file (--out, out=) instead, or to another path."
        )
    if store.key == request.key:
        return Action.REUSE if store.complete else Action.RESUME
    stored, asked = _stored_inputs(store), request.as_attrs()
    diffs = [
        f"{name}: store has {_short(stored[name])}, asked for {_short(asked[name])}"
        for name in asked
        if stored[name] != asked[name]
    ] or [f"key: store has {store.key!r}, asked for {request.key!r}"]
    raise StoreMismatchError(
        f"{path} holds features made from other inputs: " + "; ".join(diffs) + f". {fix}"
    )
