"""``featpipe extract`` and ``featpipe info`` through ``featpipe.cli.main``."""

from __future__ import annotations

import json
import re

import pytest

from featpipe.cli import main
from featpipe.store import FeatureStore

TOY = ["--backbone", "toy", "--workers", "0", "--device", "cpu", "--no-progress"]


def _store_path(out: str) -> str:
    return re.search(r"features written to (\S+)", out).group(1)


def test_extract_then_info(image_folder, tmp_path, capsys):
    args = [
        "extract",
        str(image_folder),
        *TOY,
        "--cache-dir",
        str(tmp_path / "cache"),
        "--layers",
        "pooled",
        "stage1:max",
        "--batch-size",
        "4",
        "--test-fraction",
        "0.34",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert re.search(r"extracted 18 images in [\d.]+ s \([\d.]+ images/s\) on cpu", out)
    path = _store_path(out)
    assert path.endswith(".h5") and "images-toy-" in path
    store = FeatureStore(path)
    assert store.complete and store.split_counts() == {"train": 12, "val": 0, "test": 6}

    assert main(args) == 0  # same inputs: reused
    assert "reused cached store" in capsys.readouterr().out

    assert main(["info", path]) == 0
    text = capsys.readouterr().out
    assert "complete: 5/5 chunks of 4 rows" in text
    assert re.search(r"stage1:max\s+18 x 16\s+float16\s+pooling max", text)
    assert "train 12, val 0, test 6" in text and store.attrs["weights_sha256"] in text

    assert main(["info", path, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["layers"]["pooled"]["shape"] == [18, 32] and info["backbone"] == "toy"
    assert info["chunks_done"] == info["chunks_total"] == 5


def test_limits_and_out_path(split_image_folder, tmp_path, capsys):
    out = tmp_path / "small.h5"
    args = [
        "extract",
        str(split_image_folder),
        *TOY,
        "--out",
        str(out),
        "--dtype",
        "float32",
        "--limit-train",
        "6",
        "--limit-test",
        "3",
        "--image-size",
        "24",
    ]
    assert main(args) == 0
    assert _store_path(capsys.readouterr().out) == str(out)
    store = FeatureStore(out)
    assert store.split_counts() == {"train": 6, "val": 12, "test": 3}
    assert store.attrs["preprocessing"]["crop"] == 24
    assert store.layer_info("pooled")["dtype"] == "float32"


def test_mismatched_out_is_an_error_with_the_fix(image_folder, tmp_path, capsys):
    out = tmp_path / "s.h5"
    assert main(["extract", str(image_folder), *TOY, "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["extract", str(image_folder), *TOY, "--out", str(out), "--dtype", "float32"]) == 2
    err = capsys.readouterr().err
    assert "dtype" in err and "--overwrite" in err
    assert (
        main(
            [
                "extract",
                str(image_folder),
                *TOY,
                "--out",
                str(out),
                "--dtype",
                "float32",
                "--overwrite",
            ]
        )
        == 0
    )
    assert FeatureStore(out).layer_info("pooled")["dtype"] == "float32"


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit):
        main(["extract", "--help"])
    text = capsys.readouterr().out
    assert "examples:" in text and "--limit-train" in text
    with pytest.raises(SystemExit):
        main(["info", "--help"])
    assert "--json" in capsys.readouterr().out


@pytest.mark.slow
def test_digits_with_efficientnet_lite0_end_to_end(tmp_path, capsys):
    args = [
        "extract",
        "digits",
        "--backbone",
        "efficientnet_lite0",
        "--image-size",
        "64",
        "--limit-train",
        "60",
        "--limit-val",
        "20",
        "--limit-test",
        "20",
        "--layers",
        "pooled",
        "blocks.5:avg",
        "--cache-dir",
        str(tmp_path),
        "--no-progress",
        "--workers",
        "0",
    ]
    assert main(args) == 0
    store = FeatureStore(_store_path(capsys.readouterr().out))
    X, y = store.arrays("pooled", split="train")
    assert X.shape == (60, 1280) and len(set(y.tolist())) == 10
    assert store.layer_info("blocks.5:avg")["dim"] == 192
    assert store.attrs["preprocessing"]["mean"] == [0.5, 0.5, 0.5]


def _break(image_folder, names=("dog/002.jpg", "fox/004.jpg", "cat/001.jpg")) -> None:
    for name in names:
        path = image_folder / name
        path.write_bytes(path.read_bytes()[:300])  # truncated


def test_unreadable_image_is_one_line_without_a_worker_traceback(
    image_folder, tmp_path, capsys, monkeypatch
):
    _break(image_folder)
    args = ["extract", str(image_folder), *TOY, "--workers", "2", "--out", str(tmp_path / "s.h5")]
    monkeypatch.delenv("FEATPIPE_DEBUG", raising=False)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert re.match(r"featpipe extract: error: Cannot read image '.*cat/001\.jpg': truncated", err)
    assert "--on-error skip" in err

    monkeypatch.setenv("FEATPIPE_DEBUG", "1")  # the full traceback, then the same line
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert err.splitlines()[-1].startswith("featpipe extract: error: Cannot read image")


def test_on_error_skip_then_info_lists_the_skipped_images(image_folder, tmp_path, capsys):
    _break(image_folder)
    out = tmp_path / "s.h5"
    args = ["extract", str(image_folder), *TOY, "--out", str(out), "--on-error", "skip"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert f"skipped 3 unreadable images; `featpipe info {out}` lists them" in text
    assert FeatureStore(out).split_counts()["train"] == 15

    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "skipped     3 unreadable images, left out of every split:" in text
    assert "  cat/001.jpg: truncated file\n  dog/002.jpg: truncated file\n" in text
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["skipped"] == 3 and info["skipped_first"]["fox/004.jpg"] == "truncated file"

    assert main(args[:-2]) == 2  # the default, fail, refuses the store that left images out
    assert "leaves out 3 unreadable images: cat/001.jpg (truncated file)" in capsys.readouterr().err
