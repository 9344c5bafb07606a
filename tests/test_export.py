"""``featpipe export`` (npz, parquet), ``FeatureStore.to_pandas`` and the README's
"Using the features elsewhere" snippets, run as written on a small store."""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest

from featpipe.cli import main
from featpipe.errors import FeaturePipeError, MissingExtraError, StoreNotFoundError
from featpipe.store import FeatureStore, write_arrays

README = Path(__file__).resolve().parents[1] / "README.md"
CLASSES = ["cat", "dog", "fox"]


def small_store(path: Path) -> FeatureStore:
    """24 rows, 3 classes, train/val/test, two layers; rows 0..23 have feature i in column 0."""
    n = 24
    y = np.arange(n) % 3
    X = np.random.default_rng(0).normal(size=(n, 6)).astype(np.float32) + y[:, None]
    X[:, 0] = np.arange(n)
    splits = ["train"] * 12 + ["val"] * 6 + ["test"] * 6
    return write_arrays(
        path,
        {"pooled": X, "other": X[:, :2]},
        y,
        splits,
        CLASSES,
        attrs={"backbone": {"spec": "toy"}},
        dtype="float32",
    )


@pytest.fixture
def store(tmp_path) -> FeatureStore:
    return small_store(tmp_path / "store.h5")


def test_npz_holds_ids_splits_labels_features_and_classes(store, tmp_path, capsys):
    out = tmp_path / "test.npz"
    args = ["export", str(store.path), "--layer", "pooled", "--split", "test", "--out", str(out)]
    assert main(args) == 0
    assert "wrote 6 rows x 6 features of layer pooled" in capsys.readouterr().out
    data = np.load(out, allow_pickle=False)
    X, y = store.arrays("pooled", "test")
    np.testing.assert_array_equal(data["features"], X)
    np.testing.assert_array_equal(data["labels"], y)
    assert list(data["ids"]) == store.ids("test") and set(data["splits"]) == {"test"}
    assert list(data["classes"]) == CLASSES and str(data["layer"]) == "pooled"


def test_parquet_is_read_by_pandas_and_pyarrow(store, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    pd = pytest.importorskip("pandas")
    out = tmp_path / "all.parquet"
    assert main(["export", str(store.path), "--layer", "pooled", "--out", str(out)]) == 0
    table = pq.read_table(out)
    assert table.schema.field("features").type.list_size == 6
    assert json.loads(table.schema.metadata[b"featpipe"])["store_key"] == store.key
    df = pd.read_parquet(out)
    assert list(df.columns) == ["id", "split", "label", "class", "features"]
    assert df["split"].value_counts().to_dict() == {"train": 12, "val": 6, "test": 6}
    for split in ("train", "val", "test"):
        part = df[df["split"] == split]
        X, y = store.arrays("pooled", split)
        np.testing.assert_array_equal(np.stack(part["features"].to_numpy()), X)
        np.testing.assert_array_equal(part["label"].to_numpy(), y)
        assert list(part["id"]) == store.ids(split)
        assert list(part["class"]) == [CLASSES[i] for i in y]


@pytest.mark.parametrize("reader", ["polars", "duckdb"])
def test_parquet_is_read_by_polars_and_duckdb(store, tmp_path, reader):
    pytest.importorskip("pyarrow")
    lib = pytest.importorskip(reader)
    out = tmp_path / "all.parquet"
    assert main(["export", str(store.path), "--layer", "other", "--out", str(out)]) == 0
    if reader == "polars":
        df = lib.read_parquet(out)
        rows, first = df.height, df["features"][0].to_list()
    else:
        with lib.connect() as con:
            rows = con.execute(f"SELECT count(*) FROM '{out}'").fetchall()[0][0]
            first = con.execute(f"SELECT features FROM '{out}' LIMIT 1").fetchall()[0][0]
    X, _ = store.arrays("other", "train")
    assert rows == 24 and list(first) == pytest.approx(X[0].tolist())


def test_an_existing_file_is_kept_unless_forced(store, tmp_path, capsys):
    out = tmp_path / "x.npz"
    out.write_text("keep me")
    args = ["export", str(store.path), "--layer", "pooled", "--out", str(out)]
    assert main(args) == 2
    assert "exists; pass --force" in capsys.readouterr().err and out.read_text() == "keep me"
    assert main([*args, "--force"]) == 0 and np.load(out)["features"].shape == (24, 6)
    capsys.readouterr()
    assert main(["export", str(store.path), "--out", str(tmp_path / "y.npz")]) == 2
    assert "several layers (pooled, other); choose one with --layer" in capsys.readouterr().err
    assert main(["export", str(store.path), "--layer", "pooled", "--out", "x.csv"]) == 2
    assert "--format npz or parquet" in capsys.readouterr().err
    assert not Path("x.csv").exists() and not list(tmp_path.glob(".*tmp"))


@pytest.mark.parametrize(
    "command",
    [
        "info {missing}",
        "export {missing} --out {tmp}/x.npz",
        "consolidate {missing} --out {tmp}/y.h5",
        "info {tmp}",  # a folder, not a store
        "export {store} --layer pooled --out {tmp}/afile/x.npz",  # under a file
        "export {store} --layer pooled --out {tmp}/adir --format npz --force",  # a folder
    ],
)
def test_mistaken_paths_end_in_one_line(store, tmp_path, capsys, command):
    (tmp_path / "afile").write_text("a file")
    (tmp_path / "adir").mkdir()
    args = command.format(missing=tmp_path / "nosuch.h5", tmp=tmp_path, store=store.path)
    assert main(args.split()) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"featpipe {args.split()[0]}: error: ") and err.count("\n") == 1
    assert "afile" not in err or "is a file, not a folder" in err
    assert (tmp_path / "afile").read_text() == "a file" and not any((tmp_path / "adir").iterdir())


def test_a_missing_store_is_a_feature_pipe_error_and_a_file_not_found_error(tmp_path):
    with pytest.raises(StoreNotFoundError, match=r"No feature store at .*nosuch\.h5") as err:
        FeatureStore(tmp_path / "nosuch.h5")
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, FeaturePipeError)
    with pytest.raises(StoreNotFoundError, match="is a folder, not a feature store file"):
        FeatureStore(tmp_path)


def test_to_pandas(store, monkeypatch):
    pytest.importorskip("pandas")
    df = store.to_pandas("pooled", "val")
    X, y = store.arrays("pooled", "val")
    assert list(df["id"]) == store.ids("val") and list(df["label"]) == list(y)
    assert set(df["split"]) == {"val"} and list(df["class"]) == [CLASSES[i] for i in y]
    np.testing.assert_array_equal(np.stack(df["features"].to_numpy()), X)
    assert len(store.to_pandas("other")) == 24
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if not installed
    with pytest.raises(MissingExtraError, match=r'pip install "featpipe\[parquet\]"'):
        store.to_pandas("pooled")


def _readme_section() -> list[tuple[str, str]]:
    """(language, code) of the blocks of README's "Using the features elsewhere"."""
    text = README.read_text()
    section = text.split("### Using the features elsewhere")[1].split("\n### ")[0]
    return re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S)


def test_readme_snippets_run_as_written(tmp_path, monkeypatch, capsys):
    """h5py, numpy, pandas and faiss (skipped without faiss) on a store named store.h5."""
    pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    monkeypatch.chdir(tmp_path)
    small_store(tmp_path / "store.h5")
    blocks = _readme_section()
    assert [lang for lang, _ in blocks] == ["python", "bash", "python", "python", "python"]
    for lang, code in blocks:
        if lang == "bash":
            for line in code.strip().splitlines():
                assert main(shlex.split(line)[1:]) == 0
        elif "import faiss" not in code:
            exec(compile(code, "README.md", "exec"), {})
    faiss_block = blocks[-1][1]
    pytest.importorskip("faiss")
    exec(compile(faiss_block, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    accuracy = float(re.search(r"1-NN accuracy ([\d.]+)", printed).group(1))
    assert "nearest to" in printed and accuracy > 0.5  # classes differ by a shift of 1
