"""What a JPEG file's header says, read without decoding: enough to send the files that
nvJPEG may decode wrongly without an error to Pillow instead.

nvJPEG's batched decoder raises on some files it cannot handle, but not on all: a CMYK or
RGB file (an Adobe marker, or component ids 'R', 'G', 'B') can come out in the wrong
colours, a progressive file goes to a slower software path, and a truncated file (no
end-of-image marker) can decode with garbage in its lower part. libjpeg (Pillow) handles
each of them, or fails with a clear error.
"""

from __future__ import annotations

from typing import NamedTuple

# Start-of-frame markers: C0 baseline, C1 extended sequential, C2 progressive, C3 lossless,
# and their differential/arithmetic-coded variants. C4 (DHT), C8 (JPG) and CC (DAC) are not.
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_SEQUENTIAL_HUFFMAN = frozenset({0xC0, 0xC1})
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM and RSTn carry no length
_SOI, _EOI, _SOS, _APP14 = 0xD8, 0xD9, 0xDA, 0xEE


class JpegHeader(NamedTuple):
    sof: int | None  # the start-of-frame marker (0xC0 baseline, 0xC2 progressive, ...)
    precision: int  # bits per sample
    components: int  # 1 grey, 3 YCbCr (or RGB), 4 CMYK/YCCK
    adobe_transform: int | None  # APP14 "Adobe" colour transform (0: none, i.e. RGB/CMYK)
    complete: bool  # an end-of-image marker follows the first scan
    component_ids: bytes = b""  # b"RGB" marks RGB in a file with no JFIF or Adobe marker


def read_header(data: bytes) -> JpegHeader | None:
    """The header of the JPEG file ``data``, or None when it is not a readable JPEG header
    (not starting with SOI, or cut off before its first scan)."""
    if data[:2] != b"\xff\xd8":
        return None
    sof, precision, components, adobe, ids = None, 0, 0, None, b""
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None  # a segment must start with a marker
        marker = data[pos + 1]
        if marker == 0xFF:  # fill bytes before a marker
            pos += 1
            continue
        if marker in _STANDALONE or marker == _SOI:
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        body = data[pos + 4 : pos + 2 + length]
        if length < 2 or len(body) < length - 2:
            return None  # cut off inside a segment
        if marker in _SOF and len(body) >= 6:
            sof, precision, components = marker, body[0], body[5]
            ids = body[6::3][:components]  # each component: id, sampling, table
        elif marker == _APP14 and body[:5] == b"Adobe" and len(body) >= 12:
            adobe = body[11]
        elif marker == _SOS:
            if sof is None:
                return None
            scan = pos + 2 + length
            return JpegHeader(sof, precision, components, adobe, _has_eoi(data, scan), ids)
        elif marker == _EOI:
            return None
        pos += 2 + length
    return None


def _has_eoi(data: bytes, scan_start: int) -> bool:
    # In entropy-coded data an 0xFF byte is followed by 0x00 or a restart marker, so the
    # first FF D9 after the scan header is the end-of-image marker.
    return data.find(b"\xff\xd9", scan_start) != -1


def nvjpeg_safe(data: bytes) -> bool:
    """Whether nvJPEG decodes ``data`` as libjpeg does: an 8-bit baseline or extended
    Huffman-coded JPEG, grey or YCbCr, whole. Anything else goes to Pillow."""
    header = read_header(data)
    return (
        header is not None
        and header.sof in _SEQUENTIAL_HUFFMAN
        and header.precision == 8
        and header.components in (1, 3)
        and not (header.components == 3 and _maybe_rgb(header))
        and header.complete
    )


def _maybe_rgb(header: JpegHeader) -> bool:
    # libjpeg reads three components as RGB, not YCbCr, after an Adobe marker with transform
    # 0, or, with no JFIF or Adobe marker, when their ids are 'R', 'G', 'B'. Either goes to
    # Pillow, whatever other markers say: only a slower decode where nvJPEG would have agreed.
    return header.adobe_transform == 0 or header.component_ids == b"RGB"
