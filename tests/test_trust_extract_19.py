"""Embedder's feature cache: an entry carries a checksum of its bytes, so that one a power cut
left valid in its header over zeros (or any other change to its bytes, or an entry written
before the checksum) is computed and written again; a meta.json that does not hold a width is
probed again, and one that holds another width than the backbone's is corrected by the first
batch computed, on the same fitted Embedder."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import toy_backbone  # noqa: F401  (registers 'toy')
from conftest import record_calls
from test_trust_extract_18 import cached_embedder, entries, images

from featpipe.errors import ConfigError
from featpipe.extract.embedder import Embedder, _entry_bytes


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


def meta_file(tmp_path):
    [meta] = (tmp_path / "cache").glob("*/meta.json")
    return meta


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b'{"dim": 3', id="cut-short"),
        pytest.param(b"\xff\xfe\x00", id="not-utf8"),
        pytest.param(b"[32]", id="a-list"),
        pytest.param(b'{"width": 32}', id="no-dim"),
        pytest.param(b'{"dim": "32"}', id="dim-a-string"),
        pytest.param(b'{"dim": 0}', id="dim-zero"),
        pytest.param(b'{"dim": true}', id="dim-a-bool"),
        pytest.param(b'{"dim": 32.5}', id="dim-a-float"),
    ],
)
def test_a_meta_json_without_a_width_is_a_miss_probed_and_written_again(tmp_path, text) -> None:
    width = cached_embedder(tmp_path).n_features_out_
    meta = meta_file(tmp_path)
    meta.write_bytes(text)
    emb = cached_embedder(tmp_path)
    assert emb.n_features_out_ == width
    assert json.loads(meta.read_text()) == {"dim": width}
    assert emb.transform(images(1)).shape == (1, width)


def foreign_entry(file, width: int, architecture: str) -> None:
    """An entry of another width that passes its checksum: what a cache whose meta.json
    records that width could hold."""
    file.write_bytes(_entry_bytes(np.ones(width, np.float32), architecture))


def test_a_meta_json_of_another_width_is_corrected_by_the_first_computed_batch(
    tmp_path, monkeypatch
) -> None:
    """The width read at fit is corrected on the same fitted object: no refit, no file to
    delete; an entry of the recorded width is not returned."""
    expected = Embedder("toy", device="cpu", n_jobs=1).fit().transform(images(3))
    width = expected.shape[1]
    cached_embedder(tmp_path).transform(images(1))  # the other two rows are not cached
    [first] = entries(tmp_path)
    foreign_entry(first, width + 5, cached_embedder(tmp_path)._architecture())
    meta = meta_file(tmp_path)
    meta.write_text(json.dumps({"dim": width + 5}))
    emb = cached_embedder(tmp_path)
    assert emb.n_features_out_ == width + 5
    forwards = record_calls(monkeypatch, emb, "_forward")
    features = emb.transform(images(3))
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-7)
    # rows 1 and 2 found the width out, and are then read; the foreign row 0 is computed
    assert [len(batch) for batch in forwards] == [2, 1]
    assert emb.n_features_out_ == width and len(emb.get_feature_names_out()) == width
    assert json.loads(meta.read_text()) == {"dim": width}
    assert np.load(first).shape == (width,)
    np.testing.assert_array_equal(emb.transform(images(3)), features)
    assert [len(batch) for batch in forwards] == [2, 1]  # all read
    assert cached_embedder(tmp_path).n_features_out_ == width


def test_a_width_that_changes_between_passes_is_named_in_one_line(tmp_path, monkeypatch) -> None:
    emb = Embedder("toy", device="cpu", n_jobs=1).fit()
    width = emb.n_features_out_
    real = emb._forward
    widths = iter([width + 1, width + 2])
    monkeypatch.setattr(emb, "_forward", lambda batch: real(batch)[:, :1].repeat(next(widths), 1))
    with pytest.raises(ConfigError) as error:
        emb.transform(images(2))
    message = str(error.value)
    assert "\n" not in message
    assert f"gave {width + 2} features, but {width + 1} in a pass before" in message
