"""Trust review of the data checks, the CLI's check command and provenance: each test failed
before its fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featpipe.cli import main
from featpipe.data.manifest import CSVSource
from featpipe.errors import ConfigError
from featpipe.evaluate.leakage import check_data, check_source, content_hashes
from featpipe.provenance import versions


def _csv_source(root: Path, n: int = 12) -> CSVSource:
    """``n`` distinct random PNGs in train, val and test thirds, two classes."""
    rng = np.random.default_rng(0)
    rows = ["path,label,split"]
    for i in range(n):
        image = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / f"{i}.png")
        rows.append(f"{i}.png,{'ab'[i % 2]},{('train', 'val', 'test')[i * 3 // n]}")
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    return CSVSource(root / "m.csv")


def test_two_unreadable_images_are_not_reported_as_one_image_in_two_splits(tmp_path):
    """A missing file's content part is "unreadable:<errno>", the same for every missing file:
    two missing files, one in train and one in test, were reported as an exact duplicate."""
    source = _csv_source(tmp_path)
    (tmp_path / "0.png").unlink()  # train
    (tmp_path / "9.png").unlink()  # test
    hashes = content_hashes(source)
    assert hashes["0.png"] != hashes["9.png"]
    assert check_source(source, hashes).duplicates == []


def test_a_test_image_nearly_identical_to_a_val_image_is_a_near_duplicate():
    """Heads are refit on train+val before they read test, so a test image whose near-copy is
    in val leaks as much as one whose copy is in train (exact duplicates count val too)."""
    features = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0.01, 1]], float)
    splits = ["train", "train", "val", "test"]
    checks = check_data(list("abcd"), np.array([0, 1, 0, 1]), splits, ["x", "y"], features=features)
    assert [t for t, _, _ in checks.near] == ["d"] and checks.near[0][1] == "c"
    assert "near-duplicate in train or val" in " ".join(checks.lines())


@pytest.mark.parametrize("threshold", [1.5, 0.0, -0.2, float("nan")])
def test_a_cosine_threshold_outside_0_1_is_refused(threshold):
    """A threshold above 1 found nothing and said "No test image has a near-duplicate"."""
    features = np.eye(3)
    with pytest.raises(ConfigError, match="threshold"):
        check_data(list("abc"), np.zeros(3, int), ["train", "val", "test"], ["x"],
                   features=features, threshold=threshold)  # fmt: skip


@pytest.mark.parametrize(
    ("option", "value"), [("--cosine", "1.5"), ("--min-per-class", "-1"), ("--min-per-class", "0")]
)
def test_featpipe_check_refuses_meaningless_options_in_one_line(tmp_path, capsys, option, value):
    """``featpipe check --cosine 2`` reported "No test image has a near-duplicate" (nothing can
    reach a cosine of 2), and a negative --min-per-class silently turned the check off."""
    store = tmp_path / "s.h5"
    store.write_bytes(b"not read: the options are checked first")
    assert main(["check", str(store), option, value]) == 2
    err = capsys.readouterr().err
    assert f"{option} {value}" in err and len(err.strip().splitlines()) == 1


def test_provenance_records_the_optional_libraries_that_compute_results():
    """An hf: or openclip: backbone's features and the knn_faiss head's predictions depend on
    transformers, open_clip and faiss, whose versions were not recorded."""
    from importlib.metadata import PackageNotFoundError, version

    recorded = versions()
    for dist in ("transformers", "open_clip_torch", "faiss-cpu"):
        try:
            installed = version(dist)
        except PackageNotFoundError:
            continue
        assert installed in recorded.values(), dist


@pytest.mark.parametrize("command", [["extract", "digits"], ["finetune", "--data", "digits"]])
def test_a_negative_limit_is_refused_naming_the_option(command, capsys):
    """``--limit-train -5`` was refused by subsample in its own words (a Python dict to
    write), not naming the option that was given."""
    with pytest.raises(SystemExit) as stop:
        main([*command, "--limit-train", "-5"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "--limit-train" in err and "-5" in err and "0 or more" in err


def test_featpipe_check_help_says_near_duplicates_are_looked_for_in_train_and_val(capsys):
    with pytest.raises(SystemExit):
        main(["check", "--help"])
    assert "near-duplicate in train or val" in " ".join(capsys.readouterr().out.split())
