"""Evaluation, round 16: compare()'s unused seed, newcombe_interval's export, and
`featpipe check`'s single pass over the store's ids and the source's files."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

import featpipe.evaluate
from featpipe.evaluate import compare


def _pair(n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random(n) < 0.8, rng.random(n) < 0.6


def test_compare_warns_that_a_seed_changes_nothing():
    # Before: seed was accepted and silently unused, as if the interval were a bootstrap.
    a, b = _pair()
    with pytest.warns(FutureWarning, match=r"compare\(\) ignores seed=3: .* Leave seed out"):
        seeded = compare("A", a, "B", b, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = compare("A", a, "B", b)
    assert seeded == plain


def test_newcombe_interval_is_exported():
    assert "newcombe_interval" in featpipe.evaluate.__all__
    a, b = _pair()
    low, high = featpipe.evaluate.newcombe_interval(a, b)
    assert low < (a.mean() - b.mean()) < high
    assert set(featpipe.evaluate.__all__) <= set(dir(featpipe.evaluate))


def _six_pngs(tmp_path, call, **kwargs):
    """``call`` (extract or plan_extraction) on a manifest of six PNGs through ``toy``'s pooled
    layer, cached in tmp_path; its result and the manifest."""
    import toy_backbone  # noqa: F401  (registers the 'toy' backbone)
    from test_trust_leakage_9 import _folder

    from featpipe.data.manifest import CSVSource

    csv = _folder(tmp_path / "a", [0, 1, 2, 3, 4, 5])
    kwargs.update(cache_dir=tmp_path, progress=False, device="cpu")
    return call(CSVSource(csv), "toy", ["pooled"], **kwargs), csv


def _hashed_store(tmp_path):
    """A store of six PNGs extracted with hash_contents, and its manifest."""
    from featpipe import extract

    store, csv = _six_pngs(tmp_path, extract, hash_contents=True)
    return str(store.path), csv


def test_check_reads_the_store_ids_and_the_source_files_once(tmp_path, monkeypatch):
    # Before: `featpipe check --source` read every file twice on a hash_contents store (for
    # the hashes, then for the fingerprint) and the store's ids 8 times.
    from test_trust_leakage_9 import _check

    from featpipe.data.manifest import CSVSource
    from featpipe.store import FeatureStore

    store, csv = _hashed_store(tmp_path)
    calls = {"ids": 0, "files": 0}
    ids, parts = FeatureStore.ids, CSVSource._fingerprint_parts

    def counted_ids(self, split=None):
        calls["ids"] += 1
        return ids(self, split)

    def counted_parts(self, content):
        calls["files"] += content
        return parts(self, content)

    monkeypatch.setattr(FeatureStore, "ids", counted_ids)
    monkeypatch.setattr(CSVSource, "_fingerprint_parts", counted_parts)
    assert "not those" not in _check(store, csv)
    assert calls == {"ids": 4, "files": 1}  # all rows, then one read per split


def test_check_warns_when_a_hashed_store_source_has_other_contents(tmp_path):
    # The single read still finds a file whose bytes changed under the same size and time.
    from test_trust_leakage_9 import _check

    store, csv = _hashed_store(tmp_path)
    image = csv.parent / "im0.png"
    stat = image.stat()
    data = bytearray(image.read_bytes())
    data[-20] ^= 0xFF  # inside the last chunk's CRC: same size, other bytes
    image.write_bytes(bytes(data))
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert "their contents differ from the store's record" in _check(store, csv)


def test_check_refuses_an_incomplete_store_before_hashing_its_source(tmp_path, capsys):
    # Before: `featpipe check STORE --source SRC` hashed every image of the source, then
    # refused with the reader's "pass allow_incomplete=True", which check does not take.
    from featpipe.cli import main
    from featpipe.data.manifest import CSVSource
    from featpipe.extract.extractor import plan_extraction, run_extraction

    plan, csv = _six_pngs(tmp_path, plan_extraction, chunk_rows=3)
    store = run_extraction(plan, chunks=[0])
    hashed = []
    parts = CSVSource._fingerprint_parts
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(
            CSVSource,
            "_fingerprint_parts",
            lambda s, content: hashed.append(content) or parts(s, content),
        )
        assert main(["check", str(store.path), "--source", str(csv)]) == 2
    assert True not in hashed
    err = capsys.readouterr().err.strip()
    assert err == (
        f"featpipe check: error: Cannot check {store.path}: the store is incomplete (1 of 2 "
        "chunks are not written yet). Wait for its extraction to finish, or resume it by "
        "rerunning the same `featpipe extract` (or extract()) call; `featpipe info "
        f"{store.path}` shows its progress. Then check again."
    )


@pytest.mark.parametrize("n_bins", [0, -3, 2.5, True])
def test_ece_refuses_a_bin_count_that_is_not_a_whole_number_from_1(n_bins):
    # Before: numpy's "'list' argument must have no negative elements" (0), "'minlength' must
    # not be negative" (-3) or a casting TypeError (2.5); True counted as 1 bin.
    from featpipe.errors import ConfigError

    proba = np.array([[0.9, 0.1], [0.4, 0.6]])
    with pytest.raises(ConfigError, match=rf"n_bins .*; got {n_bins!r}\. Give e\.g\. 15"):
        featpipe.evaluate.expected_calibration_error([0, 1], proba, n_bins=n_bins)
    assert featpipe.evaluate.expected_calibration_error([0, 1], proba, n_bins=1) == pytest.approx(
        0.25
    )
