"""Embedder's feature cache: an entry carries a checksum of its bytes, so that one a power cut
left valid in its header over zeros (or any other change to its bytes, or an entry written
before the checksum) is computed and written again."""

from __future__ import annotations

import io

import numpy as np
import pytest
import toy_backbone  # noqa: F401  (registers 'toy')
from conftest import record_calls

from featpipe.heads import Embedder


def images(n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 200, (20, 24, 3), dtype=np.uint8) for _ in range(n)]


def cached_embedder(tmp_path) -> Embedder:
    return Embedder("toy", device="cpu", n_jobs=1, cache_dir=tmp_path / "cache").fit()


def entries(tmp_path) -> list:
    return sorted((tmp_path / "cache").glob("*/*.npy"))


def npy_bytes(row: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, row)
    return buffer.getvalue()


def zero_after_header(file) -> None:
    """What a power cut can leave of a file written but not synced: its size, and of its bytes
    only the .npy header's block (the payload and all after it zeros)."""
    data = file.read_bytes()
    header = len(npy_bytes(np.zeros(0, np.float32)))  # same header length: it is padded to 64
    file.write_bytes(data[:header] + bytes(len(data) - header))


def flip_a_payload_bit(file) -> None:
    data = bytearray(file.read_bytes())
    data[130] ^= 1  # in the float32 row, past the 128-byte header
    file.write_bytes(bytes(data))


def written_before_checksums(file) -> None:
    """An entry as the cache wrote it before checksums (a plain .npy), of another row, so that
    returning it shows: the cache is a cache, and an entry it cannot check is computed again."""
    file.write_bytes(npy_bytes(np.load(file) + 1))


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(zero_after_header, id="header-over-zeros"),
        pytest.param(flip_a_payload_bit, id="one-bit-flipped"),
        pytest.param(written_before_checksums, id="no-checksum"),
    ],
)
def test_an_entry_whose_bytes_fail_the_checksum_is_computed_and_written_again(
    tmp_path, monkeypatch, damage
) -> None:
    expected = cached_embedder(tmp_path).transform(images())
    [first, *_] = entries(tmp_path)
    saved = first.read_bytes()
    damage(first)
    assert first.read_bytes() != saved
    again = cached_embedder(tmp_path).transform(images())
    # not the damaged entry's row (computed alone, not in a batch of 3: a rounding apart)
    np.testing.assert_allclose(again, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.load(first), np.load(io.BytesIO(saved)), rtol=1e-5, atol=1e-7)
    fresh = cached_embedder(tmp_path)
    forwards = record_calls(monkeypatch, fresh, "_forward")
    np.testing.assert_array_equal(fresh.transform(images()), again)  # the rewritten entry
    assert forwards == []  # checks, so it is read, not computed


def test_entries_with_their_checksum_are_read_not_computed(tmp_path, monkeypatch) -> None:
    expected = cached_embedder(tmp_path).transform(images())
    emb = cached_embedder(tmp_path)
    forwards = record_calls(monkeypatch, emb, "_forward")
    np.testing.assert_array_equal(emb.transform(images()), expected)
    assert forwards == []
