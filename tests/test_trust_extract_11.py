"""Extraction's words and choices: one layer asked for twice under two names, the count of
images extracted beside those skipped, which JPEGs nvJPEG gets, and a Ctrl-C during the
command's exit."""

from __future__ import annotations

import io
import re
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from featpipe.cli import main
from featpipe.extract.jpeg_header import nvjpeg_safe, read_header
from featpipe.store import FeatureStore

TOY = ["--backbone", "toy", "--workers", "0", "--device", "cpu", "--no-progress"]


def test_a_layer_and_the_same_layer_with_its_default_pooling_are_refused(
    image_folder, tmp_path, capsys
):
    """'stage1' pools by avg (a B×C×H×W map): 'stage1:avg' beside it stored the same
    features twice, under two names."""
    out = tmp_path / "s.h5"
    args = ["extract", str(image_folder), *TOY, "--out", str(out), "--layers"]
    assert main([*args, "stage1", "stage1:avg"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and not out.exists()
    assert "Layers 'stage1' and 'stage1:avg' of toy are the same features" in err
    assert "('stage1' pooled by 'avg'); ask for one of them" in err

    assert main([*args, "stage1", "stage1:max"]) == 0  # two poolings: two features
    capsys.readouterr()
    assert set(FeatureStore(out).layers) == {"stage1", "stage1:max"}


@pytest.mark.parametrize("parted", [[], ["--shard", "0/1"]])
def test_the_extracted_count_leaves_out_the_skipped_images(image_folder, tmp_path, capsys, parted):
    """With 3 of 18 images unreadable, the CLI said 'extracted 18 images' and then 'skipped 3'."""
    for name in ("dog/002.jpg", "fox/004.jpg", "cat/001.jpg"):
        path = image_folder / name
        path.write_bytes(path.read_bytes()[:300])  # truncated
    out = tmp_path / "s.h5"
    args = ["extract", str(image_folder), *TOY, "--out", str(out), "--on-error", "skip"]
    assert main([*args, "--batch-size", "4", *parted]) == 0
    text = capsys.readouterr().out
    assert re.search(r"extracted 15 images \(3 skipped\) in [\d.]+ s", text), text
    assert "skipped 3 unreadable images" in text


def _segments(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """The (marker, body) segments of a JPEG before its first scan, and the rest."""
    pos, segments = 2, []
    while data[pos + 1] != 0xDA:
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        segments.append((data[pos + 1], data[pos + 4 : pos + 2 + length]))
        pos += 2 + length
    return segments, data[pos:]


def _rgb_ids_jpeg(keep_jfif: bool = False) -> tuple[bytes, bytes]:
    """A YCbCr JPEG written by Pillow, and the same file with no JFIF marker and component
    ids 'R', 'G', 'B' (in its frame and scan headers): libjpeg reads its samples as RGB."""
    pixels = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    segments, scan = _segments(data)
    out = bytearray(b"\xff\xd8")
    for marker, body in segments:
        if marker == 0xE0 and not keep_jfif:
            continue  # the JFIF marker
        if marker == 0xC0:
            body = bytearray(body)
            body[6], body[9], body[12] = b"RGB"
        out += bytes([0xFF, marker]) + (len(body) + 2).to_bytes(2, "big") + bytes(body)
    scan = bytearray(scan)
    scan[5], scan[7], scan[9] = b"RGB"  # FF DA, length, count, then (id, tables) each
    return data, bytes(out + scan)


def test_a_jpeg_with_rgb_component_ids_and_no_jfif_marker_goes_to_pillow():
    """nvjpeg_safe sent it to nvJPEG, which may decode its RGB samples as YCbCr."""
    ycbcr, rgb = _rgb_ids_jpeg()
    assert nvjpeg_safe(ycbcr) and not nvjpeg_safe(rgb)
    header = read_header(rgb)
    assert (header.sof, header.components, header.adobe_transform) == (0xC0, 3, None)
    assert header.complete and header.component_ids == b"RGB"
    assert read_header(ycbcr).component_ids == b"\x01\x02\x03"
    # libjpeg (Pillow) reads the same samples as other colours: the ids decide
    decoded = [np.asarray(Image.open(io.BytesIO(d)).convert("RGB"), float) for d in (ycbcr, rgb)]
    assert np.abs(decoded[0] - decoded[1]).mean() > 20
    assert not nvjpeg_safe(_rgb_ids_jpeg(keep_jfif=True)[1])  # ambiguous: Pillow decides


SCRIPT = """
import atexit, os, signal, sys, time
sys.argv[0] = "featpipe"  # as the console script
from featpipe.cli import main

def late_ctrl_c():  # a Ctrl-C while the interpreter runs its exit callbacks
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(2)

atexit.register(late_ctrl_c)
sys.exit(main({argv}))
"""


@pytest.mark.parametrize("argv", [[], ["backbones"]])
def test_a_ctrl_c_during_the_commands_exit_ends_it_at_once_with_130(argv):
    """It printed 'Exception ignored in atexit callback ... KeyboardInterrupt'."""
    script = textwrap.dedent(SCRIPT).format(argv=argv)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 128 + signal.SIGINT, done.stderr
    assert "Exception ignored" not in done.stderr and "Traceback" not in done.stderr
    assert "featpipe" in done.stdout  # what main printed is not lost


def test_main_called_by_a_program_keeps_its_ctrl_c(capsys):
    assert main([]) == 2
    capsys.readouterr()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
