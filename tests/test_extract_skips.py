"""``extract(on_error=...)``: failing with one line, skipping, resuming and reusing with skips."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from extract_child import LAYERS, NoiseSource
from PIL import Image

from featpipe.errors import ConfigError, ImageReadError
from featpipe.extract import extract
from featpipe.store import FeatureStore

FAST = dict(workers=0, device="cpu", progress=False, batch_size=5, dtype="float32")


class BadRows(NoiseSource):
    """NoiseSource whose rows ``bad`` cannot be read, and which crashes (a bug, not a bad
    image) at row ``crash_at`` once, like a run killed mid-way."""

    def __init__(self, n: int, bad: dict[int, str], crash_at: int | None = None):
        super().__init__(n)
        self.bad = bad
        self.crash_at = crash_at

    def load(self, index: int) -> Image.Image:
        if index == self.crash_at:
            self.crash_at = None
            raise RuntimeError("killed")
        if index in self.bad:
            path = f"noise/{self.ids[index]}.jpg"
            raise ImageReadError(
                f"Cannot read image {path!r}: {self.bad[index]}.", path=path, reason=self.bad[index]
            )
        return super().load(index)


BAD = {7: "truncated file", 11: "empty file", 12: "not an image"}


def _everything(path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        out = {name: ds[:] for name, ds in f["features"].items()}
        out["ok"] = f["samples/ok"][:]
        out["error"] = f["samples/error"].asstr()[:]
    return out


def _same(a, b) -> bool:
    a, b = _everything(a), _everything(b)
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_interrupted_run_with_skips_resumes_to_the_same_store(tmp_path):
    reference = extract(
        BadRows(23, BAD), "toy", LAYERS, out=tmp_path / "ref.h5", on_error="skip", **FAST
    )
    assert reference.skipped() == {
        "img0007": "truncated file",
        "img0011": "empty file",
        "img0012": "not an image",
    }
    out = tmp_path / "s.h5"
    with pytest.raises(RuntimeError, match="killed"):
        extract(BadRows(23, BAD, crash_at=17), "toy", LAYERS, out=out, on_error="skip", **FAST)
    assert FeatureStore(out).chunk_done().tolist() == [True, True, True, False, False]
    resumed = extract(BadRows(23, BAD), "toy", LAYERS, out=out, on_error="skip", **FAST)
    assert resumed.extraction["resumed"] and resumed.extraction["computed_chunks"] == 2
    assert resumed.extraction["skipped"] == 3
    assert _same(out, reference.path)  # features, ok flags and reasons, bitwise


def test_a_failed_run_resumes_under_skip_without_recomputing(tmp_path):
    out = tmp_path / "s.h5"
    with pytest.raises(ImageReadError, match=r"img0007\.jpg': truncated file.*on_error=\"skip\""):
        extract(BadRows(23, BAD), "toy", LAYERS, out=out, **FAST)
    assert FeatureStore(out).chunk_done().tolist() == [True, False, False, False, False]
    store = extract(BadRows(23, BAD), "toy", LAYERS, out=out, on_error="skip", **FAST)
    assert store.extraction["computed_chunks"] == 4  # chunk 0 from the failed run is kept
    reference = extract(
        BadRows(23, BAD), "toy", LAYERS, out=tmp_path / "r.h5", on_error="skip", **FAST
    )
    assert _same(out, reference.path)  # on_error is not in the store key, rightly


def test_good_rows_have_the_features_of_a_run_without_bad_images(tmp_path):
    skip = extract(BadRows(23, BAD), "toy", LAYERS, out=tmp_path / "s.h5", on_error="skip", **FAST)
    clean = extract(NoiseSource(23), "toy", LAYERS, out=tmp_path / "c.h5", **FAST)
    keep = [i for i in range(23) if i not in BAD]
    for layer in LAYERS:
        np.testing.assert_array_equal(skip.arrays(layer)[0], clean.arrays(layer)[0][keep])


def test_a_store_with_skips_is_refused_under_fail(tmp_path):
    out = tmp_path / "s.h5"
    extract(BadRows(23, BAD), "toy", ["pooled"], out=out, on_error="skip", **FAST)
    with pytest.raises(ImageReadError) as caught:
        extract(BadRows(23, BAD), "toy", ["pooled"], out=out, **FAST)
    message = str(caught.value)
    assert "leaves out 3 unreadable images: img0007 (truncated file);" in message
    assert 'Pass on_error="skip"' in message and "\n" not in message
    reused = extract(BadRows(23, BAD), "toy", ["pooled"], out=out, on_error="skip", **FAST)
    assert reused.extraction["reused"] and reused.extraction["skipped"] == 3


def test_an_incomplete_store_with_skips_is_refused_under_fail(tmp_path):
    out = tmp_path / "s.h5"
    with pytest.raises(RuntimeError, match="killed"):
        extract(BadRows(23, BAD, crash_at=17), "toy", ["pooled"], out=out, on_error="skip", **FAST)
    with pytest.raises(ImageReadError, match="leaves out 3 unreadable image"):
        extract(BadRows(23, BAD), "toy", ["pooled"], out=out, **FAST)


def test_failure_in_a_worker_process_is_one_line(tmp_path):
    with pytest.raises(ImageReadError) as caught:
        extract(
            NoiseSource(10, fail_at=7),
            "toy",
            ["pooled"],
            out=tmp_path / "s.h5",
            **{**FAST, "workers": 2},
        )
    message = str(caught.value)
    assert message.startswith("Cannot read image 'noise/img0007.jpg': broken.")
    assert "\n" not in message and "Traceback" not in message and 'on_error="skip"' in message


def test_skips_in_worker_processes(tmp_path):
    options = {**FAST, "workers": 2}
    store = extract(
        BadRows(23, BAD), "toy", ["pooled"], out=tmp_path / "s.h5", on_error="skip", **options
    )
    assert list(store.skipped()) == ["img0007", "img0011", "img0012"]


def test_on_error_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="on_error must be one of fail, skip; got 'ignore'"):
        extract(NoiseSource(6), "toy", ["pooled"], out=tmp_path / "s.h5", on_error="ignore", **FAST)
