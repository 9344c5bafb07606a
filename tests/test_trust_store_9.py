"""Trust sweep of the feature store, round 2: an --out that names a folder by its trailing
slash, the lock error of a run folder, and the skipped images of an incomplete parted store
whose part file is gone."""

from __future__ import annotations

import pytest
from extract_child import NoiseSource

from featpipe.cli import main
from featpipe.errors import ConfigError, MissingPartError
from featpipe.extract import extract
from featpipe.store import FeatureStore
from featpipe.store.parts import parts_dir

FAST = dict(workers=0, device="cpu", progress=False, batch_size=4, dtype="float32")


def test_an_out_ending_with_a_slash_is_refused_not_written_as_a_file(tmp_path):
    """`featpipe extract ... --out dir/` (no such folder yet) wrote the store to a FILE named
    dir: Path() drops the slash."""
    out = f"{tmp_path / 'dir'}/"
    with pytest.raises(ConfigError, match=r"ends with a slash.*e\.g\. .*dir/features\.h5"):
        extract(NoiseSource(8), "toy", ["pooled"], out=out, **FAST)
    assert not (tmp_path / "dir").exists()


def test_skipped_of_a_parted_store_with_a_deleted_part_says_the_part_is_missing(tmp_path):
    """skipped() on an incomplete parted store whose part file was deleted said 'its data is
    damaged (... No such file)': the part is missing, and the same extraction recomputes it."""
    out = tmp_path / "s.h5"
    source = NoiseSource(40, fail_at=3)
    extract(source, "toy", ["pooled"], out=out, chunk_rows=2, shard=(0, 2), on_error="skip", **FAST)
    store = FeatureStore(out)
    assert not store.complete and "img0003" in store.skipped()
    for part in parts_dir(out).glob("part-*.h5"):
        part.unlink()
    with pytest.raises(MissingPartError, match=r"part files are missing: .*Rerun the same"):
        store.skipped()


PIPELINE = """
name = "t"
device = "cpu"
[source]
data = "digits"
limits = { train = 60, val = 30, test = 30 }
[features]
backbones = ["toy"]
image_size = 16
workers = 0
cache_dir = "CACHE"
[probes]
heads = ["knn"]
"""


def test_a_run_folder_that_cannot_be_locked_is_named_as_the_run_folder(tmp_path, capsys):
    """`featpipe run --out /proc/x` said 'Cannot lock /proc/x/results.jsonl ...: write the
    store to a folder you can write to (--cache-dir or --out)': it is the run folder."""
    toml = tmp_path / "t.toml"
    toml.write_text(PIPELINE.replace("CACHE", str(tmp_path / "cache")))
    assert main(["run", str(toml), "--out", "/proc/featpipe-run-test", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "Cannot lock the run folder /proc/featpipe-run-test for writing" in err
    assert "(--out)" in err and "the store" not in err
