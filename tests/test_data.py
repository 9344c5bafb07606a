"""Image sources: folders, CSV manifests, arrays, built-ins, RGB decoding and seeded splits."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image_folder
from PIL import Image

from featpipe.data import (
    BUILTIN_SOURCES,
    SPLIT_CODES,
    ArraySource,
    CSVSource,
    ImageFolderSource,
    ImageSource,
    list_builtin_sources,
    load_builtin,
    load_rgb,
    open_source,
    register_builtin_source,
    stratified_split,
    subsample,
)
from featpipe.data.images import to_rgb
from featpipe.errors import ConfigError, ImageReadError, SourceError, UnknownNameError
from featpipe.extract import extract

# ---------------------------------------------------------------------------- RGB decoding


def _palette_image(transparent: bool) -> Image.Image:
    img = Image.new("P", (2, 1))
    img.putpalette([200, 10, 20, 5, 6, 7] + [0] * 762)
    img.putpixel((0, 0), 0)
    img.putpixel((1, 0), 1)
    if transparent:
        img.info["transparency"] = 1
    return img


def _image(mode: str, values) -> Image.Image:
    """A 2x1 image in ``mode`` with the two pixel values given."""
    img = Image.new(mode, (2, 1))
    img.putpixel((0, 0), values[0])
    img.putpixel((1, 0), values[1])
    return img


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (_image("L", (0, 100)), [(0, 0, 0), (100, 100, 100)]),
        (_image("1", (0, 1)), [(0, 0, 0), (255, 255, 255)]),
        (_palette_image(transparent=False), [(200, 10, 20), (5, 6, 7)]),
        (_palette_image(transparent=True), [(200, 10, 20), (255, 255, 255)]),
        (_image("RGBA", ((10, 20, 30, 255), (10, 20, 30, 0))), [(10, 20, 30), (255, 255, 255)]),
        (_image("RGBA", ((0, 0, 0, 128), (0, 0, 0, 255))), [(127, 127, 127), (0, 0, 0)]),
        (_image("LA", ((50, 255), (50, 0))), [(50, 50, 50), (255, 255, 255)]),
        (_image("CMYK", ((0, 0, 0, 0), (255, 0, 0, 0))), [(255, 255, 255), (0, 255, 255)]),
        (_image("I;16", (65535, 32768)), [(255, 255, 255), (128, 128, 128)]),
        (_image("I;16B", (65535, 257)), [(255, 255, 255), (1, 1, 1)]),
        (_image("I", (0, 65535)), [(0, 0, 0), (255, 255, 255)]),
        (_image("F", (0.0, 1.0)), [(0, 0, 0), (255, 255, 255)]),
        (_image("F", (-2.0, 2.0)), [(0, 0, 0), (255, 255, 255)]),
    ],
    ids=[
        "L",
        "1",
        "P",
        "P+transparency",
        "RGBA",
        "RGBA-half",
        "LA",
        "CMYK",
        "I;16",
        "I;16B",
        "I",
        "F01",
        "Frange",
    ],
)
def test_to_rgb_converts_every_mode(image, expected):
    rgb = to_rgb(image)
    assert rgb.mode == "RGB"
    assert [tuple(p) for p in np.asarray(rgb)[0]] == expected


@pytest.mark.parametrize(
    ("name", "image", "expected"),
    [
        ("gray16.png", _image("I;16", (65535, 0)), [(255, 255, 255), (0, 0, 0)]),
        ("palette.png", _palette_image(transparent=True), [(200, 10, 20), (255, 255, 255)]),
        ("alpha.png", _image("RGBA", ((1, 2, 3, 255), (1, 2, 3, 0))), [(1, 2, 3), (255, 255, 255)]),
        ("bits.png", _image("1", (1, 0)), [(255, 255, 255), (0, 0, 0)]),
        (
            "cmyk.tif",
            _image("CMYK", ((0, 0, 0, 0), (0, 255, 0, 0))),
            [(255, 255, 255), (255, 0, 255)],
        ),
    ],
)
def test_load_rgb_from_files(tmp_path, name, image, expected):
    image.save(tmp_path / name)
    rgb = load_rgb(tmp_path / name)
    assert rgb.mode == "RGB"
    assert [tuple(p) for p in np.asarray(rgb)[0]] == expected


@pytest.mark.parametrize(
    ("mode", "values", "key", "expected"),
    [
        ("L", (0, 100), 0, [(255, 255, 255), (100, 100, 100)]),
        ("RGB", ((0, 0, 0), (9, 8, 7)), (0, 0, 0), [(255, 255, 255), (9, 8, 7)]),
        ("1", (0, 1), 0, [(255, 255, 255), (255, 255, 255)]),
        ("I;16", (0, 32768), 0, [(255, 255, 255), (128, 128, 128)]),
    ],
)
def test_a_transparency_key_is_composited_on_white(tmp_path, mode, values, key, expected):
    _image(mode, values).save(tmp_path / "keyed.png", transparency=key)  # a PNG tRNS chunk
    rgb = load_rgb(tmp_path / "keyed.png")
    assert [tuple(p) for p in np.asarray(rgb)[0]] == expected


def test_load_rgb_names_the_bad_file(tmp_path):
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not an image")
    with pytest.raises(ImageReadError, match=r"garbage\.jpg.*Re-encode.*or remove"):
        load_rgb(garbage)

    good = tmp_path / "ok.jpg"
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(good)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ImageReadError, match=r"truncated\.jpg"):
        load_rgb(truncated)

    with pytest.raises(ImageReadError, match=r"missing\.png"):
        load_rgb(tmp_path / "missing.png")


# ---------------------------------------------------------------------------- splits


def _labels(sizes) -> np.ndarray:
    return np.repeat(np.arange(len(sizes)), sizes)


def test_stratified_split_is_seeded_and_stratified():
    labels = _labels([50, 31, 17, 9, 3])
    a = stratified_split(labels, 0.2, 0.3, seed=7)
    assert a.dtype == np.uint8
    np.testing.assert_array_equal(a, stratified_split(labels, 0.2, 0.3, seed=7))
    assert not np.array_equal(a, stratified_split(labels, 0.2, 0.3, seed=8))
    for c, size in enumerate([50, 31, 17, 9, 3]):
        mine = a[labels == c]
        assert abs((mine == SPLIT_CODES["val"]).sum() - 0.2 * size) <= 1
        assert abs((mine == SPLIT_CODES["test"]).sum() - 0.3 * size) <= 1
    assert (a == SPLIT_CODES["val"]).sum() == round(len(labels) * 0.2)


def test_stratified_split_keeps_a_train_row_per_class():
    labels = _labels([1, 2, 3, 40])
    codes = stratified_split(labels, 0.45, 0.45, seed=0)
    for c in range(4):
        assert (codes[labels == c] == SPLIT_CODES["train"]).sum() >= 1
    assert (codes == SPLIT_CODES["test"]).sum() > 0


@pytest.mark.parametrize(
    ("val", "test"), [(-0.1, 0.0), (1.0, 0.0), (0.5, 0.5), ("0.1", 0.0), (0.1, float("nan"))]
)
def test_stratified_split_rejects_bad_fractions(val, test):
    with pytest.raises(ConfigError, match="fraction"):
        stratified_split(_labels([5, 5]), val, test, seed=0)


@pytest.mark.parametrize("seed", [-1, 1.5, True])
def test_seed_must_be_an_integer_at_least_zero(seed):
    with pytest.raises(ConfigError, match=rf"seed must be an integer >= 0.*got {seed!r}"):
        stratified_split(_labels([3, 3]), val_fraction=0.3, seed=seed)
    with pytest.raises(ConfigError, match=r"seed must be an integer >= 0"):
        open_source("digits", seed=seed)


def test_subsample_is_stratified_seeded_and_bounded():
    images = np.zeros((300, 4, 4), np.uint8)
    labels = _labels([200, 100])
    splits = np.repeat([0, 1, 2], 100)  # train: 100 of class 0; val: 100 of class 0; test: mixed
    source = ArraySource(images, labels, splits=splits)
    small = subsample(source, {"train": 10, "test": 30}, seed=1)
    assert small.split_counts() == {"train": 10, "val": 100, "test": 30}
    test_labels = small.labels[small.splits == SPLIT_CODES["test"]]
    assert list(np.bincount(test_labels)) == [0, 30]
    again = subsample(source, {"train": 10, "test": 30}, seed=1)
    assert again.ids == small.ids
    assert subsample(source, {"train": 10}, seed=2).ids != small.ids
    assert len(subsample(source, {"val": 1000})) == 300
    with pytest.raises(ConfigError, match="Unknown split 'dev'"):
        subsample(source, {"dev": 5})


def test_subsample_keeps_class_proportions():
    source = ArraySource(np.zeros((100, 2, 2), np.uint8), _labels([60, 30, 10]))
    small = subsample(source, {"train": 20}, seed=0)
    assert list(np.bincount(small.labels)) == [12, 6, 2]


# ---------------------------------------------------------------------------- folders


def test_folder_flat(image_folder):
    source = ImageFolderSource(image_folder)
    assert isinstance(source, ImageSource)
    assert source.classes == ["cat", "dog", "fox"]
    assert len(source) == 18
    assert source.ids[:2] == ["cat/000.jpg", "cat/001.jpg"]
    assert source.ids == sorted(source.ids)
    assert source.labels.dtype == np.int64 and list(np.bincount(source.labels)) == [6, 6, 6]
    assert source.split_counts() == {"train": 18, "val": 0, "test": 0}
    img = source.load(7)
    assert img.mode == "RGB" and img.size == (20, 16)
    assert source.read_bytes(7) == (image_folder / source.ids[7]).read_bytes()
    assert source.path(7) == str(image_folder / "dog" / "001.jpg")


def test_folder_flat_split_by_fractions(image_folder):
    source = ImageFolderSource(image_folder, val_fraction=1 / 6, test_fraction=2 / 6, seed=3)
    assert source.split_counts() == {"train": 9, "val": 3, "test": 6}
    for c in range(3):
        assert list(np.bincount(source.splits[source.labels == c], minlength=3)) == [3, 1, 2]
    again = ImageFolderSource(image_folder, val_fraction=1 / 6, test_fraction=2 / 6, seed=3)
    np.testing.assert_array_equal(source.splits, again.splits)


def test_folder_with_split_subfolders(split_image_folder):
    source = ImageFolderSource(split_image_folder)
    assert source.layout == "splits"
    assert source.classes == ["cat", "dog", "fox"]
    assert source.split_counts() == {"train": 12, "val": 12, "test": 12}
    for i in (0, 15, 30):
        assert source.ids[i].split("/")[0] == ["train", "val", "test"][source.splits[i]]
        assert source.classes[source.labels[i]] == source.ids[i].split("/")[1]


@pytest.mark.parametrize(
    ("tops", "counts"),
    [
        (("Train", "Val", "Test"), {"train": 2, "val": 2, "test": 2}),
        (("train", "validation"), {"train": 2, "val": 2, "test": 0}),
        (("TRAIN", "valid", "testing"), {"train": 2, "val": 2, "test": 2}),
    ],
)
def test_folder_split_names_in_any_case_and_alias(tmp_path, tops, counts):
    root = make_image_folder(tmp_path / "r", classes=("cat", "dog"), per_class=1, splits=tops)
    source = ImageFolderSource(root)
    assert source.layout == "splits"
    assert source.classes == ["cat", "dog"]
    assert source.split_counts() == counts


def test_folder_split_like_folders_beside_others_are_refused(tmp_path):
    root = make_image_folder(tmp_path / "r", classes=("cat", "Test"), per_class=1)
    with pytest.raises(SourceError, match=r"'Test'.*split.*'cat'"):
        ImageFolderSource(root)
    both = make_image_folder(
        tmp_path / "b", classes=("cat", "dog"), per_class=1, splits=("train", "val", "validation")
    )
    with pytest.raises(SourceError, match=r"'val' and 'validation'.*same split"):
        ImageFolderSource(both)
    train_twice = make_image_folder(
        tmp_path / "t", classes=("cat", "dog"), per_class=1, splits=("train", "Train")
    )
    with pytest.raises(SourceError, match=r"'Train' and 'train'.*same split"):
        ImageFolderSource(train_twice)


def test_folder_carves_missing_val_from_train(split_image_folder):
    shutil.rmtree(split_image_folder / "val")
    source = ImageFolderSource(split_image_folder, val_fraction=0.25, seed=0)
    assert source.split_counts() == {"train": 9, "val": 3, "test": 12}
    val_ids = [i for i, s in zip(source.ids, source.splits, strict=True) if s == 1]
    assert all(i.startswith("train/") for i in val_ids)
    with pytest.warns(UserWarning, match="test_fraction=0.2 is ignored"):
        ImageFolderSource(split_image_folder, test_fraction=0.2)


def test_folder_warns_when_a_split_lacks_a_class(tmp_path):
    root = make_image_folder(tmp_path / "r", classes=("cat", "dog"), per_class=2, splits=("train",))
    make_image_folder(root, classes=("cat", "dgo"), per_class=2, splits=("test",))
    with pytest.warns(UserWarning) as record:
        source = ImageFolderSource(root)
    messages = sorted(str(w.message) for w in record)
    assert len(messages) == 2
    assert "/train'" in messages[1]
    assert "'dgo'" in messages[1] and "'dog'" in messages[0]
    assert source.classes == ["cat", "dgo", "dog"]


def test_folder_errors(tmp_path, image_folder):
    with pytest.raises(SourceError, match="does not exist"):
        ImageFolderSource(tmp_path / "nowhere")
    (image_folder / "emu").mkdir()
    (image_folder / "emu" / "notes.txt").write_text("no images here")
    with pytest.raises(SourceError, match=r"emu'.*no images.*\.jpg"):
        ImageFolderSource(image_folder)

    one = make_image_folder(tmp_path / "one", classes=("cat",), per_class=2)
    with pytest.raises(SourceError, match="at least two classes; found only 'cat'"):
        ImageFolderSource(one)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match=r"No class folders.*\.png"):
        ImageFolderSource(tmp_path / "empty")
    no_train = make_image_folder(tmp_path / "nt", per_class=1, splits=("val", "test"))
    with pytest.raises(SourceError, match="no 'train' folder"):
        ImageFolderSource(no_train)


def test_folder_corrupt_image_is_named_on_load(image_folder):
    (image_folder / "dog" / "002.jpg").write_bytes(b"\xff\xd8 broken")
    source = ImageFolderSource(image_folder)
    with pytest.raises(ImageReadError, match=r"dog/002\.jpg"):
        source.load(source.ids.index("dog/002.jpg"))
    os.remove(image_folder / "dog" / "002.jpg")
    with pytest.raises(ImageReadError, match=r"dog/002\.jpg"):
        source.read_bytes(source.ids.index("dog/002.jpg"))


def test_fingerprint_tracks_files(image_folder):
    source = ImageFolderSource(image_folder)
    base, base_content = source.fingerprint(), source.fingerprint(content=True)
    assert base != base_content
    assert ImageFolderSource(image_folder).fingerprint() == base

    target = image_folder / "fox" / "003.jpg"
    original, stat = target.read_bytes(), target.stat()
    target.write_bytes(original + b"\0")  # a different size
    assert ImageFolderSource(image_folder).fingerprint() != base

    # Same size and mtime, different bytes: only the content fingerprint notices.
    target.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    changed = ImageFolderSource(image_folder)
    assert changed.fingerprint() == base
    assert changed.fingerprint(content=True) != base_content

    # A different split is a different dataset.
    assert ImageFolderSource(image_folder, val_fraction=0.3).fingerprint() != base


def test_fingerprint_of_a_file_name_that_is_not_utf8(image_folder):
    import toy_backbone  # noqa: F401

    cat = os.fsencode(image_folder / "cat")
    os.rename(cat + b"/000.jpg", cat + b"/caf\xe9.jpg")  # a latin-1 name, as unzipped
    source = ImageFolderSource(image_folder)
    assert "cat/caf\udce9.jpg" in source.ids
    assert len(source.fingerprint()) == 64 and len(source.fingerprint(content=True)) == 64
    # A store keeps names as UTF-8: extraction names the file before anything is computed.
    with pytest.raises(SourceError, match=r"sample id b'cat/caf\\xe9.jpg' is not valid UTF-8"):
        extract(source, "toy", ["pooled"], cache_dir=image_folder.parent / "cache", device="cpu")
    os.rename(cat + b"/caf\xe9.jpg", cat + b"/caf\xe8.jpg")
    assert ImageFolderSource(image_folder).fingerprint() != source.fingerprint()


# ---------------------------------------------------------------------------- CSV


def _write_csv(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_csv_with_split_column(image_folder):
    csv = _write_csv(
        image_folder / "manifest.csv",
        [
            "path,label,split",
            "cat/000.jpg,cat,train",
            "dog/000.jpg,dog,train",
            "cat/001.jpg,cat,test",
            "",
            f"{image_folder / 'dog' / '001.jpg'},dog,val",
        ],
    )
    source = CSVSource(csv)
    assert source.classes == ["cat", "dog"]
    assert source.ids[:3] == ["cat/000.jpg", "dog/000.jpg", "cat/001.jpg"]
    assert list(source.labels) == [0, 1, 0, 1]
    assert [int(s) for s in source.splits] == [0, 0, 2, 1]
    assert source.load(3).size == (20, 16)
    assert source.read_bytes(1) == (image_folder / "dog" / "000.jpg").read_bytes()


def test_csv_split_column_takes_the_aliases_of_split_folders(image_folder):
    # "validation", "dev" or "Train" were refused in a CSV, though folders, shards and
    # tables read them.
    splits = ["Train", "training", "validation", "dev", "Test", "testing"]
    rows = [f"{c}/{i:03d}.jpg,{c},{splits[i]}" for c in ("cat", "dog") for i in range(6)]
    csv = _write_csv(image_folder / "aliases.csv", ["path,label,split", *rows])
    assert CSVSource(csv).split_counts() == {"train": 4, "val": 4, "test": 4}


def test_csv_without_split_column(image_folder):
    rows = [f"{c}/{i:03d}.jpg,{c}" for c in ("cat", "dog", "fox") for i in range(6)]
    csv = _write_csv(image_folder / "all.csv", ["path,label", *rows])
    source = CSVSource(csv, val_fraction=1 / 3, seed=1)
    assert source.split_counts() == {"train": 12, "val": 6, "test": 0}
    assert open_source(csv, val_fraction=1 / 3, seed=1).ids == source.ids


@pytest.mark.parametrize(
    ("lines", "match"),
    [
        (["path,label", "cat/000.jpg,cat,extra"], r"line 2: expected 2 fields"),
        (
            ["path,label,split", "cat/000.jpg,cat,train", "dog/000.jpg,dog,holdout"],
            r"line 3: unknown split 'holdout'.*train, val, test \(or dev, testing, training, ",
        ),
        (["path,label", "cat/000.jpg,cat", "dog/999.jpg,dog"], r"line 3: .*dog/999\.jpg"),
        (["path,label", "cat/000.jpg,", "dog/000.jpg,dog"], r"line 2: empty 'label'"),
        (["path,label", "cat/000.jpg,cat", "cat/000.jpg,dog"], r"line 3.*already listed on line 2"),
        (["file,label", "cat/000.jpg,cat"], r"missing path"),
        (["path,label", "cat/000.jpg,cat", "cat/001.jpg,cat"], r"found only 'cat'"),
        (
            ["path,label,split", "cat/000.jpg,cat,test", "dog/000.jpg,dog,val"],
            r"No train rows in the split column of .*bad\.csv' \(it gives 1 val, 1 test\)",
        ),
    ],
    ids=[
        "fields",
        "split",
        "missing-file",
        "empty-label",
        "duplicate",
        "header",
        "one-class",
        "no-train",
    ],
)
def test_csv_errors(image_folder, lines, match):
    csv = _write_csv(image_folder / "bad.csv", lines)
    with pytest.raises(SourceError, match=match):
        CSVSource(csv)


@pytest.mark.parametrize("spelling", ["absolute", "cat/../cat/000.jpg", "link.jpg"])
def test_csv_refuses_one_file_under_two_spellings(image_folder, spelling):
    os.symlink(image_folder / "cat" / "000.jpg", image_folder / "link.jpg")
    if spelling == "absolute":
        spelling = str(image_folder / "cat" / "000.jpg")
    lines = ["path,label,split", "cat/000.jpg,cat,train", "dog/000.jpg,dog,train"]
    csv = _write_csv(image_folder / "m.csv", [*lines, f"{spelling},cat,test"])
    with pytest.raises(SourceError, match=r"line 4: .* same image as line 2 \('cat/000\.jpg'\)"):
        CSVSource(csv)


def test_subset_takes_indices_or_a_boolean_mask_and_refuses_repeats():
    source = ArraySource(np.zeros((6, 2, 2), np.uint8), [0, 1] * 3, splits=[0, 0, 0, 0, 2, 2])
    by_mask = source.subset(source.splits == 2)
    assert by_mask.ids == ["arrays/000004", "arrays/000005"]
    assert by_mask.split_counts() == {"train": 0, "val": 0, "test": 2}
    assert source.subset([5, 1]).ids == ["arrays/000005", "arrays/000001"]
    assert len(source.subset([])) == 0
    with pytest.raises(ConfigError, match=r"boolean mask .* 6 rows.*got shape \(3,\)"):
        source.subset([True, False, True])
    with pytest.raises(ConfigError, match=r"row 1 .*more than once"):
        source.subset([1, 2, 1])
    with pytest.raises(ConfigError, match=r"\[0, 6\).* 6, -1"):
        source.subset([0, 6, -1])
    with pytest.raises(ConfigError, match=r"integer row indices.*float64"):
        source.subset([0.0, 1.0])


# ---------------------------------------------------------------------------- arrays and built-ins


def test_array_source_gray_and_rgba():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (12, 5, 4), dtype=np.uint8)
    source = ArraySource(gray, ["b", "a", "c"] * 4, splits=["train", "val", "test"] * 4)
    assert source.classes == ["a", "b", "c"]
    assert list(source.labels[:3]) == [1, 0, 2]
    assert source.ids[0] == "arrays/000000" and source.ids[11] == "arrays/000011"
    assert source.split_counts() == {"train": 4, "val": 4, "test": 4}
    img = source.load(2)
    assert img.mode == "RGB" and img.size == (4, 5)
    np.testing.assert_array_equal(np.asarray(img)[..., 1], gray[2])
    assert source.read_bytes(2) is None

    rgba = np.zeros((4, 2, 2, 4), np.uint8)  # fully transparent black
    assert np.asarray(ArraySource(rgba, [0, 1, 0, 1]).load(0)).min() == 255


def test_array_source_fingerprint_follows_pixels():
    images = np.zeros((6, 3, 3), np.uint8)
    a = ArraySource(images, [0, 1] * 3, val_fraction=0.3, seed=0)
    fp = a.fingerprint()
    images2 = images.copy()
    images2[4, 1, 1] = 1
    assert ArraySource(images2, [0, 1] * 3, val_fraction=0.3, seed=0).fingerprint() != fp
    assert ArraySource(images, [0, 1] * 3, val_fraction=0.3, seed=0).fingerprint() == fp


def test_array_source_errors():
    with pytest.raises(SourceError, match="uint8"):
        ArraySource(np.zeros((2, 3, 3), np.float32), [0, 1])
    with pytest.raises(SourceError, match="one label per image"):
        ArraySource(np.zeros((2, 3, 3), np.uint8), [0])
    with pytest.raises(SourceError, match="no class name"):
        ArraySource(np.zeros((2, 3, 3), np.uint8), [0, 2], classes=["x", "y"])
    with pytest.raises(ConfigError, match="Unknown split"):
        ArraySource(np.zeros((2, 3, 3), np.uint8), [0, 1], splits=["train", "dev"])


def test_array_source_refuses_ragged_images_repeated_ids_and_classes():
    ragged = [np.zeros((4, 4, 3), np.uint8), np.zeros((5, 4, 3), np.uint8)]
    with pytest.raises(SourceError, match=r"one shape.*\(4, 4, 3\) and \(5, 4, 3\).*Resize"):
        ArraySource(ragged, [0, 1])
    images = np.zeros((4, 2, 2), np.uint8)
    with pytest.raises(SourceError, match=r"4 unique ids.*'a' is given 2 times"):
        ArraySource(images, [0, 1, 0, 1], ids=(i for i in ["a", "a", "b", "c"]))
    with pytest.raises(SourceError, match=r"4 unique ids.*got 3"):
        ArraySource(images, [0, 1, 0, 1], ids=["a", "b", "c"])
    with pytest.raises(SourceError, match=r"classes names 'a' twice"):
        ArraySource(images, ["a", "b", "a", "b"], classes=["a", "b", "a"])
    with pytest.raises(SourceError, match=r"classes names 'x' twice"):
        ArraySource(images, [0, 1, 0, 1], classes=["x", "x"])


def test_digits_builtin():
    source = load_builtin("digits")
    assert "digits" in list_builtin_sources()
    assert len(source) == 1797
    assert source.classes == [str(d) for d in range(10)]
    assert source.split_counts() == {"train": 1079, "val": 359, "test": 359}
    assert source.images.dtype == np.uint8 and source.images.max() == 255
    assert source.ids[5] == "digits/000005"
    assert source.load(0).size == (8, 8)
    assert load_builtin("digits", seed=1).fingerprint() != source.fingerprint()
    with pytest.raises(ConfigError, match="val_fraction"):
        load_builtin("digits", val_frac=0.1)


def test_builtin_registry():
    with pytest.raises(UnknownNameError, match="Did you mean: 'digits'"):
        load_builtin("digit")
    with pytest.raises(ConfigError, match="already registered"):
        register_builtin_source("digits")(lambda: None)

    @register_builtin_source("_tiny")
    def tiny(*, seed: int = 0) -> ArraySource:
        return ArraySource(np.zeros((2, 1, 1), np.uint8), [0, 1], seed=seed)

    try:
        assert "_tiny" in list_builtin_sources()
        assert len(open_source("_tiny")) == 2
    finally:
        BUILTIN_SOURCES.remove("_tiny")


def test_open_source_dispatch(tmp_path, image_folder):
    folder = open_source(image_folder, val_fraction=0.5)
    assert isinstance(folder, ImageFolderSource) and folder.split_counts()["val"] == 9
    assert open_source(folder) is folder
    with pytest.raises(ConfigError, match="cannot be applied"):
        open_source(folder, seed=1)
    assert open_source("digits").ids[0] == "digits/000000"
    with pytest.raises(SourceError, match=r"does not exist.*CSV manifest.*digits"):
        open_source(tmp_path / "nope")
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(SourceError, match=r"not a \.csv"):
        open_source(tmp_path / "x.txt")
