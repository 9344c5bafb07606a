"""Trust sweep, store/extract leftovers: a hand-made file at --out, damaged part files, and
`featpipe info` on a part file."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from extract_child import NoiseSource

from featpipe.cli import main
from featpipe.errors import StoreMismatchError, UnreadableStoreError
from featpipe.extract import extract
from featpipe.store.writer import write_arrays

OPTIONS = dict(workers=0, device="cpu", progress=False, batch_size=4, dtype="float32")


def _parted(out: Path):
    """A complete parted store of 16 rows in 2 parts (--shard 0/1)."""
    store = extract(
        NoiseSource(16), "toy", ["pooled"], out=out, shard=(0, 1), chunk_rows=2, **OPTIONS
    )
    assert store.complete and len(store.parts) == 2
    return store


def test_a_file_at_out_whose_backbone_is_not_an_object_is_one_line(tmp_path):
    """A featpipe-format file at --out with a backbone attribute that is JSON but not an
    object: comparing its inputs with the request raised AttributeError."""
    out = tmp_path / "hand.h5"
    write_arrays(
        out, {"pooled": np.ones((4, 2), np.float32)}, [0, 1, 0, 1], ["train"] * 4, ["a", "b"],
        attrs={"key": "other", "backbone": {"spec": "toy"}},
    )  # fmt: skip
    with h5py.File(out, "r+") as f:
        f.attrs["backbone"] = '"abc"'
    with pytest.raises(UnreadableStoreError, match=r"hand\.h5 is damaged or was not written by"):
        extract(NoiseSource(8), "toy", ["pooled"], out=out, **OPTIONS)


def test_a_part_without_chunk_flags_is_named_not_a_key_error(tmp_path):
    """A part file that HDF5 reads but that has no progress/chunk_done (a foreign file, or a
    part edited by hand) escaped as a KeyError traceback on the next run."""
    store = _parted(tmp_path / "p.h5")
    with h5py.File(store.parts[0].path, "r+") as f:
        del f["progress/chunk_done"]
    with pytest.raises(UnreadableStoreError) as caught:
        _parted(store.path)  # the same command again
    said = str(caught.value)
    assert "part-00000.h5, part 0 of the parted store" in said
    assert "no progress/chunk_done dataset" in said and "Delete that file" in said


def test_a_damaged_part_keeps_its_reason_whatever_its_folder_is_named(tmp_path):
    """The damage reason was cut out of open_h5's message at its first "store: ": a folder
    named so gave a reason made of the path and the whole message."""
    folder = tmp_path / "a store: b"
    folder.mkdir()
    store = _parted(folder / "p.h5")
    part = store.parts[0].path
    part.write_bytes(part.read_bytes()[:4096])  # cut short, as by a kill or a full disk
    with pytest.raises(UnreadableStoreError) as caught:
        _parted(store.path)  # the same command again
    said = str(caught.value)
    assert "part 0 of the parted store" in said
    assert "is damaged (the file is truncated" in said, said
    assert said.count("is not a readable featpipe store") == 0, said


def test_info_on_a_part_file_names_its_parted_store(tmp_path, capsys):
    """`featpipe info` on a part file described it as a store of its own 8 rows, without
    saying it is one part of a parted store of 16."""
    store = _parted(tmp_path / "p.h5")
    part = store.parts[1].path
    assert main(["info", "--no-scan", str(part)]) == 0
    said = capsys.readouterr().out
    assert f"part 1 (rows 8-15) of the parted store {store.path}" in said, said
    assert main(["info", "--no-scan", "--json", str(part)]) == 0
    part_of = json.loads(capsys.readouterr().out)["part_of"]
    assert part_of == {
        "part": 1,
        "rows": [8, 16],
        "parent_key": store.key,
        "store": str(store.path),
    }
    assert main(["info", "--no-scan", "--json", str(store.path)]) == 0
    assert json.loads(capsys.readouterr().out)["part_of"] is None
    store.path.rename(tmp_path / "moved.h5")  # no top-level file beside the parts: said so
    assert main(["info", "--no-scan", str(part)]) == 0
    assert "whose top-level file is not beside" in capsys.readouterr().out


def test_extracting_to_a_part_file_is_refused_not_reused(tmp_path):
    """A part file carries its parent's key: extracting the same 16 images to it "reused" its
    8 rows as a complete store of the whole source."""
    store = _parted(tmp_path / "p.h5")
    part = store.parts[1].path
    with pytest.raises(StoreMismatchError) as caught:
        extract(NoiseSource(16), "toy", ["pooled"], out=part, chunk_rows=2, **OPTIONS)
    said = str(caught.value)
    assert f"is part 1 (rows 8-15) of the parted store {store.path}" in said, said
