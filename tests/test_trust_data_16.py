"""Trust sweep of the data sources (session 15, round 2): the limits, the sweep's train sizes and
the fine-tune's val carve drew rows by their positions, so the same images listed in another
order kept other rows; they now draw in the order of the rows' ids, as the val/test carve does."""

from __future__ import annotations

import hashlib
import itertools
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from featpipe.data import ArraySource, CSVSource, ImageFolderSource, load_builtin
from featpipe.data.splits import nested_subsets, subsample, train_subset
from featpipe.errors import ConfigError
from featpipe.finetune.data import split_rows


def _ids(source, rows) -> set[str]:
    return {source.ids[r] for r in rows}


def _kept(source) -> dict[str, set[str]]:
    return {split: _ids(source, source.indices(split)) for split in ("train", "val", "test")}


def _shuffled_arrays(n: int = 40) -> tuple[ArraySource, ArraySource]:
    """One set of 40 images with ids (classes of 14, 13 and 13), as listed and shuffled."""
    images = np.arange(n, dtype=np.uint8).repeat(16).reshape(n, 4, 4)
    labels, ids = np.arange(n) % 3, [f"img{i:02d}" for i in range(n)]
    shuffled = np.random.default_rng(3).permutation(n)
    return tuple(
        ArraySource(images[o], labels[o], ids=[ids[i] for i in o]) for o in (np.arange(n), shuffled)
    )


def _pngs(folder: Path, names: list[str]) -> None:
    for i, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (4, 4), i * 9).save(folder / name)


def test_the_same_images_listed_in_another_order_keep_the_same_limited_rows(tmp_path):
    # subsample (source.limits, --limit-train) chose each class's rows by their positions: a
    # manifest sorted another way kept other train and test images
    rows = [(f"{c}{i}.png", c) for c in "ab" for i in range(12)]
    _pngs(tmp_path, [p for p, _ in rows])
    kept = []
    for n, listed in enumerate([rows, rows[::-1], rows[1::2] + rows[::2]]):
        manifest = tmp_path / f"{n}.csv"
        manifest.write_text("path,label\n" + "".join(f"{p},{c}\n" for p, c in listed))
        source = CSVSource(manifest, test_fraction=0.25)
        kept.append(_kept(subsample(source, {"train": 7, "test": 3})))
    assert [len(k["train"]) for k in kept] == [7, 7, 7] and kept[1] == kept[0] == kept[2]

    listed, shuffled = _shuffled_arrays()
    limits = {"train": 11}
    assert _kept(subsample(listed, limits, seed=2)) == _kept(subsample(shuffled, limits, seed=2))


def test_the_same_images_listed_in_another_order_get_the_same_train_size_subsets():
    # train_subset (the sweep's train_sizes) ranked rows by their positions
    listed, shuffled = _shuffled_arrays()
    for size in (5, 17):
        assert _kept(train_subset(listed, size, 1)) == _kept(train_subset(shuffled, size, 1))
    labels, ids = np.asarray(shuffled.labels), shuffled.ids
    drawn = nested_subsets(labels, [5, 17], 1, ids)
    assert {n: _ids(shuffled, rows) for n, rows in drawn.items()} == {
        n: _kept(train_subset(listed, n, 1))["train"] for n in (5, 17)
    }


def test_the_same_images_listed_in_another_order_give_the_fine_tune_the_same_val_rows():
    # split_rows (a fine-tune on a source with no val split) carved val by position
    listed, shuffled = _shuffled_arrays()
    (train_a, val_a, _), (train_b, val_b, _) = (split_rows(s, 0.3, 4) for s in (listed, shuffled))
    assert _ids(listed, val_a) == _ids(shuffled, val_b)
    assert _ids(listed, train_a) == _ids(shuffled, train_b)


def test_the_checks_verdict_on_a_train_size_follows_the_draw_not_the_order(tmp_path):
    # the check before a sweep (validate._two_classes) drew the subsets by position too: a
    # 2-image subset of 1 'a' and 3 'b' train images holds one class or two by a tie between
    # 'a' and the second 'b', so one listing was refused and another passed
    import toy_backbone  # noqa: F401  (registers the 'toy' backbone)

    from featpipe.pipeline import config_from_dict
    from featpipe.pipeline.validate import check_sizes

    ids = ["a0", "b0", "b1", "b2", "a1", "b3"]
    labels, splits = np.array([0, 1, 1, 1, 0, 1]), np.array([0, 0, 0, 0, 2, 2])
    images = np.zeros((6, 4, 4), np.uint8)
    for seed, verdict in ((0, "refused"), (1, "passed")):
        config = config_from_dict(
            {
                "name": "sizes", "out": str(tmp_path / "run"),
                "source": {"data": "digits", "train_sizes": [2], "split_seed": seed},
                "features": {"backbones": ["toy"], "cache_dir": str(tmp_path / "c")},
                "probes": {"heads": ["knn"]},
            }
        )  # fmt: skip
        for order in itertools.permutations(range(4)):
            o = [*order, 4, 5]
            source = ArraySource(
                images[o], labels[o], classes=["a", "b"], splits=splits[o], ids=[ids[i] for i in o]
            )
            subset = train_subset(source, 2, seed)
            drawn = len(set(np.asarray(subset.labels)[subset.indices("train")]))
            try:
                check_sizes(config, source)
                said = "passed"
            except ConfigError as error:
                assert "holds only class 'b'" in str(error)
                said = "refused"
            assert (said, drawn) == (verdict, 1 if verdict == "refused" else 2), order


def _digest(ids) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:12]


def test_rows_in_id_order_keep_the_rows_they_kept_before(tmp_path):
    # image folders list their rows sorted by id, ArraySource's default ids are in row order
    # (the README demo's digits, `--limit-train 5000` on the CIFAR-10 folder): the rows they
    # keep are those drawn before ids counted (digests taken before the change)
    labels = np.random.default_rng(0).integers(0, 4, 101)
    ids = [f"x/{i:04d}" for i in range(101)]
    for seed in (0, 1, 7):
        with_ids, without = (nested_subsets(labels, [3, 30, 90], seed, i) for i in (ids, None))
        assert all(np.array_equal(with_ids[n], without[n]) for n in without)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        demo = load_builtin("digits", val_fraction=0.2, test_fraction=0.2, seed=0)
        no_val = load_builtin("digits", test_fraction=0.2, seed=0)
    limited = subsample(demo, {"train": 300, "test": 100}, seed=0)
    _, val, _ = split_rows(no_val, 0.1, 0)
    digests = {
        "limits": _digest(limited.ids),
        "sizes": [_digest(_kept(train_subset(demo, n, 0))["train"]) for n in (20, 500)],
        "fine-tune val": _digest(_ids(no_val, val)),
    }
    assert digests == {
        "limits": "bd42cc3f532f",
        "sizes": ["4f90b84fd59d", "824f6aa0862c"],
        "fine-tune val": "08844a2929d0",
    }

    _pngs(tmp_path, [f"{c}/{i:02d}.png" for c in ("cat", "dog") for i in range(9)])
    folder = ImageFolderSource(tmp_path)
    assert sorted(_kept(subsample(folder, {"train": 5}, seed=3))["train"]) == [
        "cat/01.png",
        "cat/06.png",
        "cat/07.png",
        "dog/00.png",
        "dog/02.png",
    ]
    assert sorted(_kept(train_subset(folder, 4, 3))["train"]) == [
        "cat/00.png",
        "cat/07.png",
        "dog/00.png",
        "dog/04.png",
    ]
    assert sorted(_ids(folder, split_rows(folder, 0.25, 3)[1])) == [
        "cat/04.png",
        "cat/06.png",
        "cat/08.png",
        "dog/01.png",
        "dog/02.png",
    ]
