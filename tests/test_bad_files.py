"""Bad image files: one clear line naming the file and the reason, or a recorded skip.

Every kind of file is read three ways: through ``source.load`` (PIL, what the CPU path and
fine-tuning use), and through ``extract`` on both data paths (``cpu``: PIL in the workers;
``gpu`` on a CPU device: workers ship JPEG bytes, torchvision decodes them), with
``on_error="skip"`` and ``"fail"``.
"""

from __future__ import annotations

import builtins
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image_folder
from PIL import Image

from featpipe.backbones import Preprocessing
from featpipe.data import ImageFolderSource, load_rgb
from featpipe.errors import ImageReadError
from featpipe.extract import extract
from featpipe.extract.gpu_path import GPUDataPath

FAST = dict(backbone="toy", workers=0, device="cpu", progress=False, batch_size=4)


def _photo(size=(24, 20), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def _truncated_jpeg(path: Path) -> None:
    data = _encoded(_photo(), "JPEG", quality=90)
    path.write_bytes(data[: len(data) // 2])  # the header survives, half the scan is missing


def _png_header(width: int, height: int) -> bytes:
    """A PNG claiming ``width`` x ``height`` RGB pixels, with a few bytes of pixel data: a
    decompression bomb as Pillow sees it, in 68 bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _gif(path: Path) -> None:
    frames = [Image.new("RGB", (12, 10), colour) for colour in ((250, 0, 0), (0, 0, 250))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)


def _png16(path: Path) -> None:
    Image.fromarray(np.full((10, 12), 65535 // 2, dtype=np.uint16)).save(path)


def _cmyk_jpeg(path: Path) -> None:
    _photo().convert("CMYK").save(path, "JPEG", quality=90)


def _palette_alpha(path: Path) -> None:
    img = _photo().convert("P")
    img.info["transparency"] = 0
    img.save(path)


# (id, file name in class folder "a", how to write it, expected reason; None: a valid image)
KINDS = [
    ("truncated-jpeg", "bad.jpg", _truncated_jpeg, "truncated file"),
    ("zero-bytes", "bad.jpg", lambda p: p.write_bytes(b""), "empty file"),
    ("text-named-jpg", "bad.jpg", lambda p: p.write_text("hello\n"), r"not an image"),
    ("bomb", "bad.png", lambda p: p.write_bytes(_png_header(100_000, 100_000)), "image too large"),
    ("dangling-link", "bad.jpg", lambda p: p.symlink_to(p.parent / "gone.jpg"), "file not found"),
    ("link-loop", "bad.jpg", lambda p: p.symlink_to(p), "symlink loop"),
    ("png-named-jpg", "ok.jpg", lambda p: p.write_bytes(_encoded(_photo(), "PNG")), None),
    ("gif", "ok.gif", _gif, None),
    ("png-16-bit", "ok.png", _png16, None),
    ("cmyk-jpeg", "ok.jpg", _cmyk_jpeg, None),
    ("palette-transparency", "ok.png", _palette_alpha, None),
]
IDS = [kind[0] for kind in KINDS]


def _folder_with(tmp_path: Path, name: str, write) -> tuple[ImageFolderSource, int]:
    """Two classes of three good JPEGs, plus ``name`` in class a; returns it and its row."""
    root = make_image_folder(tmp_path / "images", classes=("a", "b"), per_class=3)
    write(root / "a" / name)
    source = ImageFolderSource(root)
    return source, source.ids.index(f"a/{name}")


@pytest.mark.parametrize(("kind", "name", "write", "reason"), KINDS, ids=IDS)
def test_bad_file_through_source_load(tmp_path, kind, name, write, reason):
    source, row = _folder_with(tmp_path, name, write)
    if reason is None:
        assert source.load(row).mode == "RGB"
        return
    with pytest.raises(ImageReadError) as caught:
        source.load(row)
    message = str(caught.value)
    assert "\n" not in message
    assert f"a/{name}': {reason}" in message
    assert caught.value.path.endswith(f"a/{name}") and caught.value.reason.startswith(reason)


@pytest.mark.parametrize("data_path", ["cpu", "gpu"])
@pytest.mark.parametrize(("kind", "name", "write", "reason"), KINDS, ids=IDS)
def test_bad_file_through_extract(tmp_path, kind, name, write, reason, data_path):
    source, _ = _folder_with(tmp_path, name, write)
    skip = extract(source, out=tmp_path / "skip.h5", data_path=data_path, on_error="skip", **FAST)
    assert skip.complete
    if reason is None:
        assert skip.skipped() == {} and len(skip.ids()) == len(source)
    else:
        assert list(skip.skipped()) == [f"a/{name}"]
        assert skip.skipped()[f"a/{name}"].startswith(reason)
        assert f"a/{name}" not in skip.ids() and len(skip.ids()) == len(source) - 1
        assert skip.extraction["skipped"] == 1
    X, y = skip.arrays("pooled")
    assert len(X) == len(y) == len(skip.ids()) and np.isfinite(X).all()

    fail = tmp_path / "fail.h5"
    if reason is None:
        assert extract(source, out=fail, data_path=data_path, **FAST).complete
        return
    with pytest.raises(ImageReadError) as caught:
        extract(source, out=fail, data_path=data_path, **FAST)
    message = str(caught.value)
    assert "\n" not in message and 'on_error="skip"' in message
    assert f"a/{name}': {reason}" in message


def test_gif_gives_its_first_frame(tmp_path):
    _gif(tmp_path / "two.gif")
    assert np.asarray(load_rgb(tmp_path / "two.gif"))[0, 0].tolist() == [250, 0, 0]


def test_images_over_the_pixel_limit_are_refused_not_warned(tmp_path, monkeypatch):
    # Pillow only warns between MAX_IMAGE_PIXELS and twice that; 20 x 16 = 320 pixels is there.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)
    root = make_image_folder(tmp_path / "images", classes=("a", "b"), per_class=2)
    source = ImageFolderSource(root)
    with pytest.raises(ImageReadError, match=r"image too large \(320 pixels > limit of 300\)"):
        source.load(0)
    # the GPU path checks the header of the JPEG bytes it ships undecoded
    with pytest.raises(ImageReadError, match=r"image too large \(320 pixels"):
        GPUDataPath(Preprocessing(resize=36, crop=32), "cpu").load(source, 0)
    with pytest.raises(ImageReadError, match=r"a/000\.jpg': image too large"):
        load_rgb(root / "a" / "000.jpg")


def _deny(monkeypatch, denied: Path) -> None:
    """Make ``denied`` unreadable for this process, also as root (who reads a mode-000 file
    regardless): ``open`` raises the PermissionError that a non-root user would get."""
    real_open = builtins.open

    def guarded(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and Path(file) == denied:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)
    monkeypatch.setattr(io, "open", guarded)  # pathlib's read_bytes opens through io.open


@pytest.mark.parametrize("data_path", ["cpu", "gpu"])
def test_unreadable_file_is_named_and_skipped(tmp_path, monkeypatch, data_path):
    source, row = _folder_with(tmp_path, "locked.jpg", lambda p: _photo().save(p))
    _deny(monkeypatch, Path(source.path(row)))
    with pytest.raises(ImageReadError, match=r"a/locked\.jpg': permission denied\. Make it"):
        source.load(row)
    with pytest.raises(ImageReadError, match=r"a/locked\.jpg': permission denied.*on_error="):
        extract(source, out=tmp_path / "fail.h5", data_path=data_path, **FAST)
    store = extract(source, out=tmp_path / "s.h5", data_path=data_path, on_error="skip", **FAST)
    assert store.skipped() == {"a/locked.jpg": "permission denied"}


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file with permissions 000")
def test_mode_000_file_is_permission_denied(tmp_path):
    source, row = _folder_with(tmp_path, "locked.jpg", lambda p: _photo().save(p))
    Path(source.path(row)).chmod(0)
    with pytest.raises(ImageReadError, match=r"a/locked\.jpg': permission denied"):
        source.load(row)


def test_unreadable_files_keep_the_source_fingerprint_computable(tmp_path):
    source, row = _folder_with(tmp_path, "bad.jpg", lambda p: p.symlink_to(p.parent / "gone"))
    for content in (False, True):
        before = source.fingerprint(content=content)
        Path(source.path(row)).unlink()
        _photo().save(source.path(row))  # the file comes back: the fingerprint changes
        assert source.fingerprint(content=content) != before
        Path(source.path(row)).unlink()
        Path(source.path(row)).symlink_to(Path(source.path(row)).parent / "gone")


# ---------------------------------------------------------------------------- folder scans


def test_a_link_back_to_the_root_does_not_relabel_images(tmp_path):
    root = make_image_folder(tmp_path / "images", classes=("a", "b"), per_class=2)
    (root / "a" / "up").symlink_to(root)  # listed b's images as a's, at every level of the loop
    source = ImageFolderSource(root)
    assert source.ids == ["a/000.jpg", "a/001.jpg", "b/000.jpg", "b/001.jpg"]
    assert source.labels.tolist() == [0, 0, 1, 1]


def test_symlink_loops_in_class_folders_end(tmp_path):
    root = make_image_folder(tmp_path / "images", classes=("a", "b"), per_class=2)
    (root / "a" / "self").symlink_to(root / "a")
    (root / "a" / "up").symlink_to(root)  # with the link above: exponential without a check
    (root / "b" / "deep").mkdir()
    (root / "b" / "deep" / "back").symlink_to(root / "b")
    (root / "loop").symlink_to(root)  # a "class folder" that is the whole tree
    source = ImageFolderSource(root)
    assert source.classes == ["a", "b"]
    assert source.ids == ["a/000.jpg", "a/001.jpg", "b/000.jpg", "b/001.jpg"]


def test_two_links_to_one_folder_list_its_images_once(tmp_path):
    root = make_image_folder(tmp_path / "images", classes=("a", "b"), per_class=2)
    (tmp_path / "extra").mkdir()
    _photo().save(tmp_path / "extra" / "x.jpg")
    (root / "a" / "one").symlink_to(tmp_path / "extra")
    (root / "a" / "two").symlink_to(tmp_path / "extra")
    ids = ImageFolderSource(root).ids
    assert ids == ["a/000.jpg", "a/001.jpg", "a/one/x.jpg", "b/000.jpg", "b/001.jpg"]


def test_hidden_and_non_image_files_are_ignored(tmp_path):
    root = make_image_folder(tmp_path / "images", classes=("a", "b"), per_class=2)
    (root / "a" / ".hidden.jpg").write_bytes(b"not even an image")
    (root / "a" / ".thumbs").mkdir()
    _photo().save(root / "a" / ".thumbs" / "t.jpg")
    (root / "a" / "notes.txt").write_text("labelled by hand\n")
    (root / "a" / "Thumbs.db").write_bytes(b"\x00" * 10)
    (root / ".git").mkdir()
    assert ImageFolderSource(root).ids == ["a/000.jpg", "a/001.jpg", "b/000.jpg", "b/001.jpg"]
