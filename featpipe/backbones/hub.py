"""Offline-first access to the Hugging Face hub cache, for every family that loads from it
(``hf:``, ``timm:...@pretrained``, ``open_clip:...@tag``).

Weights already in the local cache are loaded from it without touching the network. Weights
that are not cached are downloaded only when the hub is usable: never with ``HF_HUB_OFFLINE``
set, and never after one quick probe has found the hub unreachable. huggingface_hub itself
would retry an unreachable hub for about 45 s before giving up.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from featpipe.backbones.weights import WeightsUnavailableError

PROBE_TIMEOUT_S = 3.0
_TRUE = {"1", "on", "yes", "true"}


def offline() -> bool:
    """Whether the user asked for offline mode (read now, not when huggingface_hub was
    imported): ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    return env.strip().lower() in _TRUE if env is not None else bool(constants.HF_HUB_OFFLINE)


def endpoint() -> str:
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT", constants.ENDPOINT).rstrip("/")


def cache_dir() -> str:
    """The hub cache folder, from the environment as it is now (HF_HUB_CACHE, HF_HOME)."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    return constants.HF_HUB_CACHE


def unreachable_reason() -> str | None:
    """Why the hub cannot be used now (offline mode, or no answer to one short request), or
    None when it answers."""
    if offline():
        return "HF_HUB_OFFLINE is set"
    url = endpoint()
    try:  # one request, no retries: any HTTP answer, even an error status, means it answers
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=PROBE_TIMEOUT_S)
    except urllib.error.HTTPError:
        return None
    except (OSError, ValueError) as exc:  # URLError, timeouts, refused connections, bad URL
        return f"{url} cannot be reached ({type(exc).__name__}: {exc})"
    return None


def cached_file(repo_id: str, filenames: Sequence[str], revision: str | None = None) -> Path | None:
    """The first of ``filenames`` present in the local cache for ``repo_id``, or None."""
    from huggingface_hub import try_to_load_from_cache

    for name in filenames:
        found = try_to_load_from_cache(repo_id, name, cache_dir(), revision=revision)
        if isinstance(found, str):  # otherwise None or the "known not to exist" marker
            return Path(found)
    return None


def cached_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    """The local snapshot folder of ``repo_id`` (at ``revision``, default main), or None."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = snapshot_download(
            repo_id, revision=revision, cache_dir=cache_dir(), local_files_only=True
        )
        return Path(folder)
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


def not_cached(
    what: str, repo_id: str, reason: str, local_hint: str, revision: str | None = None
) -> WeightsUnavailableError:
    """The error for weights that are neither cached nor downloadable now."""
    # without the revision, the command would fetch main and leave this one missing
    args = f"{repo_id} --revision {revision}" if revision else repo_id
    return WeightsUnavailableError(
        f"{what} are not in the local Hugging Face cache ({cache_dir()}), and they cannot be "
        f"downloaded: {reason}. On a machine with network run `hf download {args}` "
        f"(older huggingface_hub: `huggingface-cli download {args}`) and copy its cache "
        f"folder here (set HF_HOME or HF_HUB_CACHE to it), or {local_hint}."
    )


def require_hub(what: str, repo_id: str, local_hint: str, revision: str | None = None) -> None:
    """Raise at once unless a download of ``repo_id`` (at ``revision``) can be tried now."""
    reason = unreachable_reason()
    if reason is not None:
        raise not_cached(what, repo_id, reason, local_hint, revision)
