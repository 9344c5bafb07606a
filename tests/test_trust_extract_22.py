"""An Embedder whose cache cannot be written (a full disk, a folder without write permission)
returns its features with one warning. Before, the first entry it could not write raised a raw
``OSError: [Errno 28] No space left on device`` from the transform, which returned nothing and
named no fix, though a cache only saves time."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import numpy as np
import pytest
from test_trust_extract_18 import images

import featpipe.atomic
from featpipe.extract.embedder import Embedder

embedder_module = sys.modules[Embedder.__module__]


def _embedder(cache) -> Embedder:
    return Embedder("toy", device="cpu", n_jobs=1, batch_size=2, cache_dir=cache)


def test_a_full_cache_disk_warns_once_and_returns_the_features(tmp_path, monkeypatch):
    expected = _embedder(None).fit().transform(images(5))
    emb = _embedder(tmp_path / "cache").fit()
    calls = []

    def full(path, write, *, durable=True):
        calls.append(path)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(embedder_module, "replace_with", full)
    with pytest.warns(UserWarning, match="could not be written") as seen:
        got = emb.transform(images(5))
    np.testing.assert_array_equal(got, expected)
    assert len(seen) == 1 and "No space left on device" in str(seen[0].message)
    assert "cache_dir=None" in str(seen[0].message)
    assert len(calls) == 1  # the rest of the call does not try again


def test_a_cache_it_could_write_is_read_back_after(tmp_path, monkeypatch):
    """Rows cached before the disk filled are still served; the others are computed."""
    emb = _embedder(tmp_path / "cache").fit()
    first = emb.transform(images(2))
    monkeypatch.setattr(embedder_module, "replace_with", _raising)
    with pytest.warns(UserWarning, match="could not be written"):
        both = emb.transform(images(4))
    np.testing.assert_array_equal(both[:2], first)
    monkeypatch.setattr(embedder_module, "replace_with", featpipe.atomic.replace_with)
    np.testing.assert_array_equal(emb.transform(images(4)), both)


def _raising(path, write, *, durable=True):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_real_full_tmpfs(tmp_path):
    folder = tmp_path / "full"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(folder)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        expected = _embedder(None).fit().transform(images(40))
        emb = _embedder(folder).fit()
        with pytest.warns(UserWarning, match="No space left on device"):
            got = emb.transform(images(40))
        np.testing.assert_array_equal(got, expected)
        assert not list(folder.glob("*/.*.tmp*"))  # no temporary file left behind
    finally:
        subprocess.run(["umount", str(folder)])


def test_a_cache_folder_that_cannot_be_made_warns_and_returns_the_features(tmp_path):
    """A cache_dir below a file (or without permission) raised a bare OSError from mkdir."""
    blocking = tmp_path / "file"
    blocking.write_text("not a folder")
    expected = _embedder(None).fit().transform(images(3))
    with pytest.warns(UserWarning, match="could not be written"):
        got = _embedder(blocking / "cache").fit().transform(images(3))
    np.testing.assert_array_equal(got, expected)
