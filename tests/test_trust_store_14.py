"""Trust sweep, store parts: a part file that lost a mapped dataset, and part files given
where a whole store is expected (consolidate, export, probe, check, the reader API)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from extract_child import NoiseSource
from test_trust_store_13 import OPTIONS, _parted

from featpipe.cli import main
from featpipe.errors import MissingPartError, StoreMismatchError, UnreadableStoreError
from featpipe.extract import extract
from featpipe.store import FeatureStore


def test_a_part_that_lost_its_features_is_refused_not_read_as_zeros(tmp_path, capsys):
    """A complete parted store whose part file lost features/<layer> (h5py del) read zeros
    for that part's rows: arrays() returned them and `featpipe info` exited 0."""
    out = tmp_path / "p.h5"
    store = _parted(out)
    X = store.arrays("pooled")[0]
    part = store.parts[1].path
    store.close()
    with h5py.File(part, "r+") as f:
        del f["features/pooled"]
    with pytest.raises(UnreadableStoreError, match=r"part-00001.h5, part 1 of the parted") as e:
        FeatureStore(out).arrays("pooled")
    assert "no features/pooled dataset" in str(e.value) and "Delete that file" in str(e.value)
    assert main(["info", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "part 1 of the parted store" in err
    part.unlink()  # the fix the message gives: only that part is recomputed
    again = extract(NoiseSource(16), "toy", ["pooled"], out=out, shard=(0, 1), chunk_rows=2,
                    **OPTIONS)  # fmt: skip
    np.testing.assert_array_equal(again.arrays("pooled")[0], X)


def test_consolidate_of_a_part_file_names_its_parted_store(tmp_path, capsys):
    """`featpipe consolidate PART` said the part 'is already one file (not a parted store);
    copy it as it is': advice to copy half of the store's rows."""
    out = tmp_path / "p.h5"
    part = _parted(out).parts[0].path
    assert main(["consolidate", str(part), "--out", str(tmp_path / "c.h5")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "copy it as it is" not in err
    assert f"part 0 (rows 0-7) of the parted store {out}" in err
    assert not (tmp_path / "c.h5").exists()


def _one_line(capsys, store: Path) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"of the parted store {store}" in err and "top-level file" in err, err
    return err


def test_commands_given_a_part_file_refuse_it_naming_the_parted_store(tmp_path, capsys):
    """probe, export and check given a part file used its 8 rows as if they were the whole
    16-row store, with no word. featpipe info (which names the parted store) and featpipe's
    own readers of parts (part=True) still read it."""
    out = tmp_path / "p.h5"
    store = _parted(out)
    part = store.parts[1].path
    assert main(["export", str(part), "--out", str(tmp_path / "e.npz")]) == 2
    _one_line(capsys, out)
    assert not (tmp_path / "e.npz").exists()
    assert main(["probe", str(part)]) == 2
    _one_line(capsys, out)
    assert main(["check", str(part)]) == 2
    _one_line(capsys, out)
    with pytest.raises(StoreMismatchError, match="holds only those rows"):
        FeatureStore(part).arrays("pooled")
    assert main(["info", str(part), "--no-scan"]) == 0
    assert "part 1 (rows 8-15) of the parted store" in capsys.readouterr().out
    np.testing.assert_array_equal(
        FeatureStore(part, part=True).arrays("pooled")[0], store.arrays("pooled")[0][8:]
    )


@pytest.mark.parametrize("lost", ["features/pooled", "samples/ok", "progress/chunk_seconds"])
def test_a_pending_part_that_lost_a_dataset_is_named_when_the_store_resumes(tmp_path, lost):
    """Resuming a parted store (the other task of --shard 0/2, 1/2) whose pending part lost a
    mapped dataset ended in h5py's KeyError traceback, or, for a progress dataset, in
    "free some space (or fix the disk)"."""
    out = tmp_path / "p.h5"
    run = dict(out=out, chunk_rows=2, **OPTIONS)
    extract(NoiseSource(16), "toy", ["pooled"], shard=(0, 2), **run).close()
    part = tmp_path / "p.parts" / "part-00001.h5"
    with h5py.File(part, "r+") as f:
        del f[lost]
    with pytest.raises(UnreadableStoreError) as caught:
        extract(NoiseSource(16), "toy", ["pooled"], shard=(1, 2), **run)
    said = str(caught.value)
    assert "part-00001.h5, part 1 of the parted store" in said, said
    assert f"no {lost} dataset" in said and "Delete that file" in said
    part.unlink()
    assert extract(NoiseSource(16), "toy", ["pooled"], shard=(1, 2), **run).complete


def test_cache_prune_of_a_parts_folder_does_not_delete_a_stores_parts(tmp_path, capsys):
    """`featpipe cache list/prune p.parts` took the part files for stores of their own:
    `prune p.parts --all --yes` deleted every part of the complete parted store p.h5."""
    out = tmp_path / "p.h5"
    _parted(out).close()
    folder = tmp_path / "p.parts"
    kept = sorted(folder.iterdir())
    for args in (["list"], ["prune", "--all", "--yes"]):
        assert main(["cache", *args, str(folder)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"parts folder of the parted store {out}" in err
        assert f"({tmp_path})" in err
    assert sorted(folder.iterdir()) == kept
    assert FeatureStore(out).complete


def test_a_renamed_parted_store_is_named_as_renamed_not_incomplete(tmp_path, capsys):
    """A parted store renamed with its parts folder (p.h5, p.parts -> q.h5, q.parts) mapped
    its parts from p.parts still: every part read as missing, so `info` said 'complete: 0/8
    chunks' and reads said 'incomplete ... rerun the same extract', which the rerun could
    not mend (it failed the same way)."""
    store = _parted(tmp_path / "p.h5")
    X = store.arrays("pooled")[0]
    store.close()
    (tmp_path / "p.h5").rename(tmp_path / "q.h5")
    (tmp_path / "p.parts").rename(tmp_path / "q.parts")
    assert main(["info", str(tmp_path / "q.h5"), "--no-scan"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "reads its parts from the folder p.parts" in err
    assert "Rename it back to p.h5 and its parts folder back to p.parts" in err
    (tmp_path / "q.h5").rename(tmp_path / "p.h5")
    (tmp_path / "q.parts").rename(tmp_path / "p.parts")
    out = tmp_path / "p.h5"
    assert main(["consolidate", str(out), "--out", str(tmp_path / "q.h5")]) == 0
    np.testing.assert_array_equal(FeatureStore(tmp_path / "q.h5").arrays("pooled")[0], X)


def test_extracting_to_a_renamed_parted_store_refuses_before_laying_out_parts(tmp_path):
    """The same extraction run on a parted store renamed without its parts folder (p.h5 ->
    q.h5) laid out empty parts in q.parts and marked q.h5 incomplete before it refused."""
    _parted(tmp_path / "p.h5").close()
    (tmp_path / "p.h5").rename(tmp_path / "q.h5")
    with pytest.raises(MissingPartError, match=r"reads its parts from the folder p\.parts"):
        _parted(tmp_path / "q.h5")
    assert not (tmp_path / "q.parts").exists()
    with h5py.File(tmp_path / "q.h5") as f:
        assert bool(f.attrs["complete"])


def test_cache_prune_incomplete_keeps_a_renamed_parted_store(tmp_path, capsys):
    """A parted store renamed with its parts folder is refused on open (above); the cache
    listed it as 'incomplete (part files missing)' and `prune --incomplete` deleted it,
    though renaming it back restores every row."""
    _parted(tmp_path / "p.h5").close()
    (tmp_path / "p.h5").rename(tmp_path / "q.h5")
    (tmp_path / "p.parts").rename(tmp_path / "q.parts")
    assert main(["cache", "list", str(tmp_path)]) == 0
    assert "renamed (reads p.parts)" in capsys.readouterr().out
    assert main(["cache", "prune", str(tmp_path), "--incomplete", "--yes"]) == 0
    assert (tmp_path / "q.h5").exists() and len(list((tmp_path / "q.parts").iterdir())) >= 2


def test_cache_prune_keeps_the_parts_of_a_store_whose_file_was_renamed(tmp_path, capsys):
    """A parted store whose top-level file alone was renamed (p.h5 -> q.h5) still reads its
    parts from p.parts: plain `featpipe cache prune` (leftovers only) deleted that folder as
    'parts of no store', so renaming q.h5 back no longer restored the store."""
    _parted(tmp_path / "p.h5").close()
    (tmp_path / "p.h5").rename(tmp_path / "q.h5")
    assert main(["cache", "list", str(tmp_path)]) == 0
    listed = capsys.readouterr().out
    assert "renamed (reads p.parts)" in listed and "p.parts" not in listed.replace("(reads p", "")
    assert main(["cache", "prune", str(tmp_path), "--yes"]) == 0
    (tmp_path / "q.h5").rename(tmp_path / "p.h5")
    assert FeatureStore(tmp_path / "p.h5").arrays("pooled")[0].shape == (16, 32)
