"""Stores holding features that are not finite: shown by ``featpipe info`` and ``check``,
named at write time, and skipped under ``on_error="skip"``."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from extract_child import NoiseSource, fill_disk
from test_extract_faults import tmpfs

from featpipe.backbones import get_backbone
from featpipe.cli import main
from featpipe.errors import NonFiniteFeaturesError
from featpipe.extract import extract
from featpipe.store import FeatureStore

N, D = 50, 6
FAST = dict(workers=0, device="cpu", progress=False, batch_size=5)


def _h5py_store(path, bad: dict[str, list[int]], value=np.nan, rows_per_chunk=8, skipped=()):
    """A complete store written with plain h5py from the layout in featpipe/store/schema.py
    (as another tool, or a featpipe that did not check features, would), with ``value`` in
    the rows ``bad[layer]`` of each layer, and the rows ``skipped`` marked not ok."""
    n_chunks = -(-N // rows_per_chunk)
    layers = ["pooled", "stage1:avg"]
    text = h5py.string_dtype()
    with h5py.File(path, "w") as f:
        f.attrs.update(format="featpipe.store", format_version=2, key="0123456789abcdef")
        f.attrs.update(layers=json.dumps(layers), dtype="float16", complete=True)
        f.attrs.update(rows_per_chunk=rows_per_chunk, n_chunks=n_chunks)
        f.create_dataset("samples/id", data=[f"img{i}" for i in range(N)], dtype=text)
        f.create_dataset("samples/label", data=np.arange(N, dtype=np.int64) % 2)
        split = f.create_dataset("samples/split", data=np.repeat([0, 1, 2], [30, 10, 10]))
        split.attrs["names"] = ["train", "val", "test"]
        ok = np.ones(N, dtype=bool)
        ok[list(skipped)] = False
        f.create_dataset("samples/ok", data=ok)
        f.create_dataset("samples/error", data=["" if o else "broken" for o in ok], dtype=text)
        f.create_dataset("classes", data=["a", "b"], dtype=text)
        for layer in layers:
            X = np.random.default_rng(0).normal(size=(N, D)).astype(np.float16)
            X[bad.get(layer, []), 1] = value
            ds = f.create_dataset(f"features/{layer}", data=X, chunks=(rows_per_chunk, D))
            ds.attrs.update(layer=layer, pooling="avg", dim=D, dtype="float16")
        f.create_dataset("progress/chunk_done", data=np.ones(n_chunks, dtype=bool))
    return path


# -- featpipe info and check -------------------------------------------------------------------


def test_info_names_the_layers_holding_values_that_are_not_finite(tmp_path, capsys):
    """info showed such a store as complete and healthy; reads then failed in every head."""
    path = _h5py_store(tmp_path / "s.h5", {"stage1:avg": [3, 41, 42, 43, 44]}, np.inf)
    assert main(["info", str(path)]) == 1
    text = capsys.readouterr().out
    assert "'stage1:avg'" in text and "5 rows" in text and "'img3'" in text
    assert "infinite" in text and "--overwrite" in text and "--dtype float32" in text
    assert "'pooled'" not in text  # only the bad layer is named
    assert main(["info", str(path), "--json"]) == 1
    info = json.loads(capsys.readouterr().out)
    assert info["non_finite"] == {
        "stage1:avg": {"rows": 5, "ids": ["img3", "img41", "img42"], "kind": "infinite"}
    }


def test_info_no_scan_reads_no_feature_and_says_so(tmp_path, capsys, monkeypatch):
    path = _h5py_store(tmp_path / "s.h5", {"pooled": [2]})

    def refused(self):
        raise AssertionError("--no-scan read the features")

    monkeypatch.setattr(FeatureStore, "non_finite", refused)
    assert main(["info", str(path), "--no-scan"]) == 0
    assert "finite      not checked (--no-scan)" in capsys.readouterr().out
    assert main(["info", str(path), "--no-scan", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["non_finite"] is None


def test_info_reads_in_blocks_and_leaves_out_skipped_and_unwritten_rows(tmp_path, capsys):
    path = _h5py_store(tmp_path / "s.h5", {"pooled": [2, 9, 20]}, skipped=[9])
    with h5py.File(path, "r+") as f:
        f["progress/chunk_done"][2] = False  # rows 16-23 (row 20) not written yet
        f.attrs["complete"] = False
    store = FeatureStore(path)
    store.SCAN_BYTES = 3 * D * 2  # a few rows at a time: blocks still hold whole chunks
    assert store.non_finite() == {"pooled": {"rows": 1, "ids": ["img2"], "kind": "NaN"}}
    clean = _h5py_store(tmp_path / "c.h5", {})
    assert main(["info", str(clean)]) == 0
    assert "not finite" not in capsys.readouterr().out
    assert FeatureStore(clean).info()["non_finite"] == {}


def test_check_names_every_layer_that_is_not_finite(tmp_path, capsys):
    """check read only `pooled`: NaN in another layer was reported clean."""
    path = _h5py_store(tmp_path / "s.h5", {"stage1:avg": [7]})
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    print(err)
    assert "'stage1:avg'" in err and "'img7'" in err and "NaN" in err and "--overwrite" in err
    assert "Traceback" not in err


# -- writing features that are not finite ------------------------------------------------------


@pytest.mark.parametrize("on_error", ["fail", "skip"])
def test_float16_overflow_cast_during_extraction_names_the_largest_value(tmp_path, on_error):
    """The features reach the writer already cast to float16 (on the device), so its error
    could not say how large they were; an overflow is no image's fault: skip does not hide it."""
    backbone = get_backbone("toy")
    with torch.no_grad():
        backbone.model.fc.bias[3] = 1e6
    with pytest.raises(NonFiniteFeaturesError) as err:
        extract(NoiseSource(12), backbone, ["pooled", "logits"], out=tmp_path / "a.h5",
                dtype="float16", on_error=on_error, **FAST)  # fmt: skip
    message = str(err.value)
    print(message)
    assert "'logits'" in message and "65504" in message and 'dtype="float32"' in message
    assert "|values| up to 1e+06" in message
    assert not FeatureStore(tmp_path / "a.h5").chunk_done().any()


class _WhiteRows(NoiseSource):
    """NoiseSource whose rows ``white`` are plain white images."""

    def __init__(self, n: int, white: list[int]):
        super().__init__(n)
        self.pixels[white] = 255


def _nan_on_white(backbone):
    """The backbone's model gives NaN logits for white images (and only for them)."""
    model = backbone.model
    forward = model.forward

    def nan_where_white(x):
        out = forward(x)
        return torch.where(x.flatten(1).mean(1, keepdim=True) > 1.5, torch.nan, out)

    model.forward = nan_where_white
    return backbone


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_nan_features_are_skipped_under_on_error_skip(tmp_path, dtype):
    """NaN from the model for one image stopped the whole extraction, even under skip."""
    layers = ["pooled", "logits"]
    source = _WhiteRows(17, [4, 11, 12])
    store = extract(source, _nan_on_white(get_backbone("toy")), layers, out=tmp_path / "s.h5",
                    dtype=dtype, on_error="skip", **FAST)  # fmt: skip
    reason = "its features are not finite (NaN in layer 'logits')"
    assert store.skipped() == {"img0004": reason, "img0011": reason, "img0012": reason}
    assert store.extraction["skipped"] == 3 and store.complete
    assert store.non_finite() == {}
    clean = extract(source, "toy", layers, out=tmp_path / "c.h5", dtype=dtype, **FAST)
    keep = np.ones(17, dtype=bool)
    keep[[4, 11, 12]] = False
    for layer in layers:  # the other rows as without the NaN; skipped rows are zeros
        np.testing.assert_array_equal(store.arrays(layer)[0], clean.arrays(layer)[0][keep])
        with h5py.File(store.path) as f:
            assert not f[f"features/{layer}"][[4, 11, 12]].any()
    with pytest.raises(NonFiniteFeaturesError, match='on_error="skip"'):
        extract(source, _nan_on_white(get_backbone("toy")), layers, out=tmp_path / "f.h5",
                dtype=dtype, **FAST)  # fmt: skip


# -- a full disk -------------------------------------------------------------------------------


@pytest.fixture
def full_disk(tmp_path):
    """A 1 MiB tmpfs, filled by the tests (fill_disk) so that no byte is free."""
    yield from tmpfs(tmp_path / "disk", "1m")


def _parted(tmp_path) -> str:
    for shard in ((0, 2), (1, 2)):
        extract(NoiseSource(40), "toy", ["pooled"], out=tmp_path / "p.h5", shard=shard, **FAST)
    return str(tmp_path / "p.h5")


@pytest.mark.parametrize("command", ["consolidate", "export-npz", "export-parquet"])
def test_a_disk_full_while_consolidating_or_exporting_is_one_line(
    tmp_path, full_disk, capsys, monkeypatch, command
):
    """A traceback (h5py's "Can't close file", or OSError from open) before."""
    import featpipe.store.consolidate as consolidate

    store = _parted(tmp_path)
    # consolidate checks the free space first: here another program takes it right after.
    monkeypatch.setattr(consolidate, "check_free_space", lambda *a: fill_disk(full_disk))
    fill_disk(full_disk)
    if command == "consolidate":
        args = ["consolidate", store, "--out", str(full_disk / "c.h5")]
    else:
        fmt = command.split("-")[1]
        if fmt == "parquet":
            pytest.importorskip("pyarrow")
        args = ["export", store, "--layer", "pooled", "--out", str(full_disk / f"e.{fmt}")]
    assert main(args) == 2
    err = capsys.readouterr().err
    print(err)
    assert "Traceback" not in err and "no space left on device" in err and "--out" in err
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]
