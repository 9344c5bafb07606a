"""The key that names a store: a hash of every input that changes the features."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence

from featpipe.store.schema import FORMAT_VERSION

KEY_LENGTH = 16


def store_key(
    source_fingerprint: str,
    backbone_identity: dict,
    layers: Sequence[str],
    dtype: str,
    compute: Mapping[str, str] | None = None,
) -> str:
    """sha256 (first 16 hex chars) over the image set fingerprint, the backbone identity
    (spec, weights sha256, preprocessing), the layer names (which include the pooling), the
    dtype and ``compute``: how the features were computed (the ``compute`` attribute, see
    ``schema``: precision and decode path, which move features by percent). Equal keys mean
    equal features; any change gives another key."""
    payload = {
        "format_version": FORMAT_VERSION,
        "source_fingerprint": source_fingerprint,
        "backbone": backbone_identity,
        "layers": sorted(layers),  # the order of requests does not change any feature
        "dtype": str(dtype),
    }
    if compute is not None:
        payload["compute"] = dict(compute)
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_LENGTH]


def _slug(text: str, limit: int = 40) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.]+", "_", text).strip("_.")
    return slug[:limit] or "x"


def store_filename(source_name: str, backbone_spec: str, key: str) -> str:
    """``<source>-<backbone>-<key>.h5``: readable in a listing, unique by the key."""
    backbone_name = backbone_spec.split("@", 1)[0]  # weights paths are long; the key covers them
    return f"{_slug(source_name)}-{_slug(backbone_name)}-{key}.h5"
