"""Checks on the data behind a benchmark: the same image in two splits or under two labels
(exact duplicates by content hash), test images nearly identical to a train or val image (a
perceptual hash of each image when the source is at hand, and the cosine similarity of their
stored ``pooled`` features; heads are refit on train+val), and classes with too few
validation or test images.
Used by the report and by ``featpipe check STORE``.

The perceptual hash finds what the features miss. On CIFAR-10 (benchmarks/near_duplicates.py)
99-100 % of resized, JPEG-quality-50 and grayscale copies of train images were within 4 bits
of their original, against 8 of 4 million distinct pairs (most of them CIFAR's own
near-duplicates); their feature cosines reached 0.99 for at most 2 %. Test images are compared
in their eight orientations (quarter turns, mirrored): 83-84 % of rotated or mirrored copies
were within 4 bits, and one more of the 4 million distinct pairs (a real mirrored copy). Neither
finds copies shifted by a pixel or two."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from featpipe.data.images import to_rgb
from featpipe.data.source import SPLIT_NAMES, ImageSource
from featpipe.errors import ConfigError, FeaturePipeError
from featpipe.words import agrees, counted, listed

if TYPE_CHECKING:
    from featpipe.store import FeatureStore

NEAR_COSINE = 0.99  # at or above: a near-duplicate
NEAR_LAYER = "pooled"
NEAR_BITS = 4  # perceptual hashes this many bits apart or fewer: a near-duplicate
MIN_PER_CLASS = 10  # fewer val or test images of a class than this: its accuracy is noise
SHOWN = 5  # example ids listed per finding
_BLOCK = 1024  # test rows per similarity block
_SIMILARITIES = 2**22  # at most this many cosines (16 MiB) at once
# float32 cosines of identical features land up to 6e-7 either side of 1 (measured at 16 to
# 4096 features): a cosine this close below the threshold reaches it, so --cosine 1 finds them.
_ROUNDING = 1e-5

CONTENT = "by content hash: sha256 of each image file, or of its pixels for in-memory images"
FEATURES = "by identical stored features; the source was not at hand to hash image contents"
NEAR_REFERENCE = ("train", "val")  # what a test image is compared with: what heads refit on
_UNREADABLE = b"unreadable:"  # a source's content part for an image it could not read


@dataclass
class DataChecks:
    """What the checks found. Ids are sample ids; ``test_ids`` lists the test split in store
    order, to pair with a result row's test predictions."""

    basis: str  # how exact duplicates were found: CONTENT or FEATURES
    duplicates: list[list[list[str]]]  # groups of [split, id] spanning splits
    near: list[list]  # [test id, train or val id, cosine], most similar first
    near_layer: str | None  # None: no pooled features, near-duplicates not checked
    small_classes: dict[str, dict[str, int]]  # split -> {class: images}, below min_per_class
    test_ids: list[str]
    threshold: float = NEAR_COSINE
    min_per_class: int = MIN_PER_CLASS
    counts: dict[str, int] = field(default_factory=dict)  # images per split
    near_reference: list[str] = field(default_factory=lambda: list(NEAR_REFERENCE))
    # [test id, train or val id, bits apart], closest first; hash_bits None: not checked
    # (no source to hash, or checks saved before perceptual hashes).
    near_hash: list[list] = field(default_factory=list)
    hash_bits: int | None = None
    # {split: images} without a perceptual hash (too small or unreadable) when others have one:
    # the hash check did not compare them.
    unhashed: dict[str, int] = field(default_factory=dict)
    # Groups of [split, id, class] holding one image (as ``basis`` finds it) under more than
    # one class, in any splits: no method gets every copy right (checks saved before: none).
    conflicts: list[list[list[str]]] = field(default_factory=list)

    @property
    def duplicated_test(self) -> set[str]:
        """Test ids whose exact copy is in train or val."""
        return {i for g in self.duplicates for s, i in g if s == "test"}

    @property
    def near_test(self) -> set[str]:
        return {t for t, _, _ in self.near} | {t for t, _, _ in self.near_hash}

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict) -> DataChecks:
        # Checks saved before val was searched compared test with train only.
        return cls(**{"near_reference": ["train"], **obj})

    def lines(self) -> list[str]:
        """One sentence per finding (and one saying what was checked)."""
        n_test = self.counts.get("test", len(self.test_ids))
        where = " or ".join(self.near_reference)
        out = []
        if self.duplicates:
            examples = "; ".join(_example(g) for g in self.duplicates[:SHOWN])
            n = len(self.duplicates)
            out.append(
                f"{counted(n, 'image')} {agrees(n, 'appears', 'appear')} in more than one split "
                f"({self.basis}); "
                f"{_of_test(len(self.duplicated_test), n_test)} a copy in train "
                f"or val. Examples: {examples}."
            )
        else:
            out.append(f"No image appears in two splits ({self.basis}).")
        if self.conflicts:
            examples = "; ".join(_conflict_example(g) for g in self.conflicts[:SHOWN])
            n = len(self.conflicts)
            out.append(
                f"{counted(n, 'image')} {agrees(n, 'carries', 'carry')} more than one label "
                f"({self.basis}): "
                "no method can get every copy right, and a head trained on them learns noise. "
                f"Examples: {examples}."
            )
        out += self._near_lines(n_test, where)
        for split, small in self.small_classes.items():
            names = listed((f"{c} ({n})" for c, n in small.items()), SHOWN, total=len(small))
            out.append(
                f"{counted(len(small), 'class', 'classes')} {agrees(len(small), 'has', 'have')} "
                f"fewer than {counted(self.min_per_class, f'{split} image')}, "
                f"too few for their per-class accuracy to mean much: {names}."
            )
        return out

    @property
    def findings(self) -> int:
        """How many kinds of problem were found (0: clean)."""
        return (
            bool(self.duplicates)
            + bool(self.conflicts)
            + bool(self.near or self.near_hash)
            + len(self.small_classes)
        )

    def _near_lines(self, n_test: int, where: str) -> list[str]:
        """The near-duplicate sentences, each naming its test: perceptual hash, feature cosine."""
        n_reference = sum(self.counts.get(split, 0) for split in self.near_reference)
        if not n_test or (self.counts and not n_reference):  # nothing to compare: not clean
            missing = "test" if not n_test else where
            return [f"Near-duplicates were not looked for: there are no {missing} images."]
        out = []
        hashed = f"(perceptual hash within {self.hash_bits} bits)"
        cosine = f"(cosine ≥ {self.threshold} on the stored {self.near_layer} features)"
        if self.near_hash:
            examples = "; ".join(f"{t} ~ {r} ({b} bits)" for t, r, b in self.near_hash[:SHOWN])
            out.append(
                f"{_of_test(len(self.near_hash), n_test)} a near-duplicate in "
                f"{where} {hashed}: resized, recompressed, recoloured, rotated or mirrored "
                f"copies. "
                f"Examples (test ~ {where}): {examples}."
            )
        elif self.hash_bits is not None:
            out.append(f"No test image has a near-duplicate in {where} {hashed}.")
        if self.hash_bits is not None and self.unhashed:
            listed = ", ".join(counted(n, f"{split} image") for split, n in self.unhashed.items())
            out.append(
                f"The perceptual hash did not compare {listed}: they are smaller than "
                f"{MIN_HASH_SIDE} px or could not be read."
            )
        if self.near_layer is None:
            if self.hash_bits is None:
                out.append(
                    f"Near-duplicates were not checked: no feature store with a {NEAR_LAYER!r} "
                    "layer was read, and no image was hashed (the source was not at hand, or "
                    f"its images are smaller than {MIN_HASH_SIDE} px)."
                )
        elif self.near:
            examples = "; ".join(f"{t} ~ {r} ({c:.4f})" for t, r, c in self.near[:SHOWN])
            out.append(
                f"{_of_test(len(self.near), n_test)} a near-duplicate in {where} "
                f"{cosine}. Examples (test ~ {where}): {examples}."
            )
        elif self.hash_bits is not None:
            out.append(f"No test image has a near-duplicate in {where} {cosine}.")
        else:  # the features alone miss most recompressed, resized or recoloured copies
            out.append(
                f"No test image has a near-duplicate in {where} {cosine}; this misses most "
                "resized, recompressed or grayscale copies, which a perceptual hash of the "
                f"images finds when the source is given and its images are {MIN_HASH_SIDE} px "
                "or larger."
            )
        return out


def _of_test(k: int, n_test: int) -> str:
    """E.g. "1 of the 5 test images has": the verb agrees with ``k``."""
    return f"{k} of the {counted(n_test, 'test image')} {agrees(k, 'has', 'have')}"


def _example(group: list[list[str]]) -> str:
    """A group of copies as its first image in each split, so that the example shows the
    leak (the first three of many black images were all train images), and how many."""
    firsts = [
        next(m for m in group if m[0] == split) for split in dict.fromkeys(s for s, _ in group)
    ]
    more = f" ({len(group)} copies)" if len(group) > len(firsts) else ""
    return " = ".join(f"{i} ({s})" for s, i in firsts) + more


def _conflict_example(group: list[list[str]]) -> str:
    """A group of copies under several labels as its first image of each of the first
    ``SHOWN`` labels (one black frame may be filed under every class), and how many."""
    labels = list(dict.fromkeys(c for _, _, c in group))
    firsts = [next(m for m in group if m[2] == c) for c in labels[:SHOWN]]
    copies = f" ({len(group)} copies)" if len(group) > len(firsts) else ""
    shown = (f"{i} ({s}, {c})" for s, i, c in firsts)
    return listed(shown, SHOWN, sep=" = ", noun="label", total=len(labels)) + copies


def content_hashes(source: ImageSource) -> dict[str, str]:
    """``{sample id: hex digest}`` of each image's content (file bytes, or pixels). An image
    that cannot be read gets a digest of its own: its part says only why (the same for every
    missing file), so two missing files would otherwise be one image in two splits."""
    parts = source._fingerprint_parts(content=True)
    return {i: _content_digest(i, p) for i, p in zip(source.ids, parts, strict=True)}


def _content_digest(sample_id: str, part: bytes) -> str:
    if part.startswith(_UNREADABLE):
        part += b"\x00" + sample_id.encode("utf-8", "surrogateescape")
    return hashlib.sha256(part).hexdigest()


_HASH_SIDE = 32  # the grayscale thumbnail a perceptual hash is taken from
# Smaller images are not hashed: at 8 px (digits) look-alike digits of different writers were
# within 4 bits of each other (22 of 359 test images flagged); the rates above are at 32 px.
MIN_HASH_SIDE = 32
_FREQS = 8  # its 8 x 8 lowest frequencies: 64 bits
# Rows of the DCT-II basis for those frequencies.
_DCT = np.cos(
    np.pi * np.arange(_FREQS)[:, None] * (2 * np.arange(_HASH_SIDE)[None, :] + 1) / (2 * _HASH_SIDE)
)
_ABSENT = 1e-6  # a DCT term this small is no frequency of the thumbnail but rounding noise
# A blank frame with noise is hashed as flat, or its noise would set its bits by chance. It is
# one whose thumbnail's gray levels spread less than _NEAR_BLANK (standard deviation, of
# 0..255; sensor noise of 4 gray levels in a 64 px frame leaves 1.9, less in larger frames;
# the least of CIFAR-10's 60,000 images is 4.1), and whose hash terms are at noise level: under
# _NOISE_TERMS times what noise of that spread gives them (each term of white noise of std s
# has std s * _HASH_SIDE / 2). Noisy frames measured 0.9-1.5 times that, pale line drawings
# 2.0-4.7 (but some fainter than a spread of 0.32, lost in the thumbnail's whole gray levels):
# those keep their own bits. So does a 64 px noisy frame saved as JPEG at quality 75 or less
# (up to 3.6: its 8 px blocks are a faint pattern at the hash's scale).
_NEAR_BLANK = 2.0
_NOISE_TERMS = 2.0
_BYTE_BITS = np.array([bin(b).count("1") for b in range(256)], np.uint8)
# A hash's bits are its 8 x 8 terms row by row (vertical frequency u, horizontal v). A mirrored
# image has the terms of odd v of opposite sign; one flipped upside down, those of odd u; a
# quarter turn transposes them. So a rotated or mirrored copy's hash is the original's with
# these bits inverted (the median moves a little: a few bits more), and transposed.
_FLIPS = tuple(map(np.uint64, (0, 0x5555555555555555, 0x00FF00FF00FF00FF, 0x55AA55AA55AA55AA)))


def perceptual_hash(image: Image.Image) -> int:
    """A 64-bit DCT hash (pHash) of ``image``: which of the 8 x 8 lowest frequencies of its
    32 x 32 grayscale thumbnail are above their median. Resizing, recompression, colour and
    brightness change few of its bits (a shift of a pixel or two, many). Flat images (a solid
    colour: no frequency but the constant one), noisy blank frames among them, are within a bit
    of each other."""
    thumb = image.convert("L").resize((_HASH_SIDE, _HASH_SIDE), Image.Resampling.LANCZOS)
    thumb = np.asarray(thumb, np.float64)
    low = _DCT @ thumb @ _DCT.T
    spread = thumb.std()
    noise = spread * _HASH_SIDE / 2  # a term's std, were all of that spread white noise
    if spread < _NEAR_BLANK and np.sqrt(np.mean(low.flat[1:] ** 2)) < _NOISE_TERMS * noise:
        low.flat[1:] = 0  # a blank frame: only its constant term, as a flat image
    # A frequency absent from the thumbnail (every one but the constant in a flat image) comes
    # out as rounding noise (under 1e-10 at 0..255 gray), whose sign would set its bit by
    # chance: it counts as 0. Flat images then hash alike, a brightness change apart.
    low[np.abs(low) < _ABSENT] = 0
    return int.from_bytes(np.packbits(low.ravel() > np.median(low)).tobytes(), "big")


def source_hashes(
    source: ImageSource, read: list[bytes] | None = None
) -> tuple[dict[str, str], dict[str, int]]:
    """:func:`content_hashes` and ``{sample id: perceptual hash}`` in one pass: each image is
    decoded (a JPEG at reduced scale) right after its file is hashed, so read from the page
    cache. An image that cannot be read or decoded has no perceptual hash (extraction fails on
    it or records it as skipped), nor has one smaller than ``MIN_HASH_SIDE``. ``read``, when
    given, receives each image's content fingerprint part, for
    ``source.fingerprint(content=True, parts=read)`` without reading the files again."""
    parts = source._fingerprint_parts(content=True)
    content, perceptual = {}, {}
    for index, (i, part) in enumerate(zip(source.ids, parts, strict=True)):
        if read is not None:
            read.append(part)
        content[i] = _content_digest(i, part)
        if part.startswith(_UNREADABLE):
            continue
        try:
            value = _image_hash(source, index)
        except (FeaturePipeError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            continue
        if value is not None:
            perceptual[i] = value
    return content, perceptual


def _image_hash(source: ImageSource, index: int) -> int | None:
    path = source.path(index)
    if path is None:  # in memory, or a source whose pixels are not its file's
        image = source.load(index)
        return perceptual_hash(image) if min(image.size) >= MIN_HASH_SIDE else None
    with Image.open(path) as image:
        if min(image.size) < MIN_HASH_SIDE:
            return None
        image.draft("L", (_HASH_SIDE, _HASH_SIDE))  # a JPEG: decoded at up to 1/8 scale, gray
        # The pixels a backbone sees: 16-bit scaled, not clipped to white; alpha on white
        # (plain L and RGB are gray the same either way, without a copy of a large image).
        if image.mode not in ("L", "RGB") or "transparency" in image.info:
            image = to_rgb(image)
        return perceptual_hash(image)


def check_data(
    ids: list[str],
    labels: np.ndarray,
    splits: list[str],
    classes: list[str],
    *,
    hashes: list[str] | None = None,
    features: np.ndarray | None = None,
    basis: str = CONTENT,
    image_hashes: dict[str, int] | None = None,
    threshold: float = NEAR_COSINE,
    hash_bits: int = NEAR_BITS,
    min_per_class: int = MIN_PER_CLASS,
    overwrite_features: bool = False,
) -> DataChecks:
    """Run every check on one row per sample. Exact duplicates (across splits, and under
    more than one label in any splits) use ``hashes`` (one digest per row, found as ``basis``
    says) when given, else identical rows of ``features``;
    near-duplicates use ``image_hashes`` (``{id: perceptual hash}``; ids left out are not
    compared) and ``features``, each when given. ``overwrite_features``: float32 ``features``
    may be changed (scaled to unit rows) instead of copied."""
    check_options(threshold, min_per_class, hash_bits)
    splits_arr = np.asarray(splits)
    if hashes is None and features is not None:
        basis = FEATURES
        hashes = [hashlib.sha256(np.ascontiguousarray(r).tobytes()).hexdigest() for r in features]
    groups: dict[str, list[list[str]]] = {}
    for h, i, s, y in zip(hashes or [], ids, splits, labels, strict=False):
        groups.setdefault(h, []).append([s, i, classes[y]])
    duplicates = [[[s, i] for s, i, _ in g] for g in groups.values() if len({m[0] for m in g}) > 1]
    conflicts = [g for g in groups.values() if len({m[2] for m in g}) > 1]
    near = []
    if features is not None:  # after the row hashes above: this may scale features in place
        near = _near_duplicates(features, splits_arr, ids, threshold, overwrite_features)
    near_hash, unhashed = [], {}
    if image_hashes:  # none: no source, or images too small to hash
        near_hash = _near_hashes(image_hashes, splits_arr, ids, hash_bits)
        for i, split in zip(ids, splits, strict=True):
            if i not in image_hashes:
                unhashed[split] = unhashed.get(split, 0) + 1
    small = {}
    for split in ("val", "test"):
        counts = np.bincount(np.asarray(labels)[splits_arr == split], minlength=len(classes))
        if counts.sum():
            few = {classes[c]: int(n) for c, n in enumerate(counts) if n < min_per_class}
            if few:
                small[split] = few
    return DataChecks(
        basis=basis,
        duplicates=duplicates,
        near=near,
        near_layer=NEAR_LAYER if features is not None else None,
        small_classes=small,
        test_ids=[i for i, s in zip(ids, splits, strict=True) if s == "test"],
        threshold=threshold,
        min_per_class=min_per_class,
        counts={s: int((splits_arr == s).sum()) for s in SPLIT_NAMES},
        near_hash=near_hash,
        hash_bits=hash_bits if image_hashes else None,
        unhashed={split: unhashed[split] for split in SPLIT_NAMES if split in unhashed},
        conflicts=conflicts,
    )


def check_options(threshold: float, min_per_class: int, hash_bits: int = NEAR_BITS) -> None:
    """Refuse values with which a check cannot find anything, yet would report it clean."""
    if not 0 <= hash_bits < 64:
        raise ConfigError(
            f"The perceptual-hash threshold is a number of bits in 0..63; got {hash_bits}. "
            f"Use e.g. {NEAR_BITS} (the default)."
        )
    if not 0 < threshold <= 1:  # also NaN
        raise ConfigError(
            f"The near-duplicate threshold is a cosine similarity in (0, 1]; got {threshold}. "
            f"Use e.g. {NEAR_COSINE} (the default)."
        )
    if min_per_class < 1:
        raise ConfigError(
            f"min_per_class is the fewest val or test images a class should have, at least 1; "
            f"got {min_per_class}. Use e.g. {MIN_PER_CLASS} (the default)."
        )


def _near_duplicates(
    features: np.ndarray,
    splits: np.ndarray,
    ids: list[str],
    threshold: float,
    overwrite: bool = False,
) -> list[list]:
    """[test id, most similar train or val id, cosine] for each test row at or above
    ``threshold``. ``overwrite``: ``features`` (float32) may be scaled in place, saving a copy
    of them all (10 GB for ImageNet at 2048 features)."""
    # Each row scaled to a largest |value| of 1 first: squaring features of any size in the
    # norm would overflow (above 1e19) or underflow (below 1e-19) and lose their direction.
    unit = features if overwrite and features.dtype == np.float32 else features.astype(np.float32)
    peak = np.maximum(unit.max(axis=1), -unit.min(axis=1))[:, None]  # no |unit| copy
    zero = peak[:, 0] == 0
    unit /= np.where(zero[:, None], 1, peak)
    for start in range(0, len(unit), _BLOCK):  # the norm squares a copy: a block at a time
        part = unit[start : start + _BLOCK]
        part /= np.maximum(np.linalg.norm(part, axis=1, keepdims=True), 1)
    test = np.flatnonzero(splits == "test")
    reference = np.flatnonzero(np.isin(splits, NEAR_REFERENCE))
    if not len(test) or not len(reference):
        return []
    found = []
    for start in range(0, len(test), _BLOCK):
        rows = test[start : start + _BLOCK]
        best, top = _most_similar(unit[rows], zero[rows], unit, zero, reference)
        for r, t, c in zip(rows, top, best, strict=True):
            if c >= threshold - _ROUNDING:
                found.append([ids[r], ids[reference[t]], round(min(float(c), 1.0), 6)])
    return sorted(found, key=lambda f: -f[2])


def _near_hashes(
    hashes: dict[str, int], splits: np.ndarray, ids: list[str], max_bits: int
) -> list[list]:
    """[test id, closest train or val id, bits apart] for each test row whose perceptual hash,
    in any of its eight orientations, is at most ``max_bits`` bits from one of theirs (of
    equally close ones, the first listed)."""
    known = np.array([i in hashes for i in ids], bool)
    values = np.array([hashes.get(i, 0) for i in ids], np.uint64)
    test = np.flatnonzero((splits == "test") & known)
    reference = np.flatnonzero(np.isin(splits, NEAR_REFERENCE) & known)
    if not len(test) or not len(reference):
        return []
    best, top = _closest_within(values[test], values[reference], max_bits)
    found = [
        [ids[r], ids[reference[t]], int(b)]
        for r, t, b in zip(test, top, best, strict=True)
        if b <= max_bits
    ]
    return sorted(found, key=lambda f: f[2])


def _closest_within(
    values: np.ndarray, ref: np.ndarray, max_bits: int
) -> tuple[np.ndarray, np.ndarray]:
    """What :func:`_closest` gives for each hash of ``values`` whose closest ``ref`` is at most
    ``max_bits`` apart (65 for the others), found through an index rather than by comparing
    every pair (multi-index hashing). The 64 bits are dealt into bands, each given a radius,
    the radii plus one summing to more than ``max_bits``: two hashes that many bits apart or
    fewer then differ in some band by at most its radius (pigeonhole). So only the ``ref``
    hashes in the buckets of each band's key with up to its radius of bits flipped are
    compared with an orientation of a hash. A hash with more such candidates than a bounded
    block, or than all of ``ref`` in 8 orientations (a crowded bucket: many flat images), is
    compared with every ``ref`` hash; so is every hash when no split into bands would probe
    fewer (very large thresholds)."""
    unique, first = np.unique(ref, return_index=True)  # a repeated hash: its first index
    plan = _band_plan(max_bits, unique)
    if plan is None:
        return _within(*_closest(values, ref), max_bits)
    bands = [np.arange(k, 64, len(plan)) for k in range(len(plan))]  # bits dealt in turn
    tables = []  # per band: bucket key -> (start in order, count), hashes by bucket
    for k, bits in enumerate(bands):
        keys = _band_key(unique, bits)
        counts = np.bincount(keys, minlength=2 ** len(bits))
        tables.append((counts, np.cumsum(counts) - counts + k * len(unique)))
    count = np.concatenate([c for c, _ in tables])
    begin = np.concatenate([b for _, b in tables])
    order = np.concatenate([np.argsort(_band_key(unique, bits), kind="stable") for bits in bands])
    offsets = np.cumsum([0] + [len(c) for c, _ in tables[:-1]])
    flips = [_flips(len(bits), radius) for bits, radius in zip(bands, plan, strict=True)]
    n_probes = 8 * sum(map(len, flips))
    queries = np.stack(_orientations(values))  # (orientation, hash)

    def buckets(block: np.ndarray) -> np.ndarray:
        """(orientation, hash, probe) bucket numbers of the hashes ``block`` of values."""
        q = queries[:, block]
        return np.concatenate(
            [
                at + (_band_key(q, bits)[..., None] ^ flip)
                for at, bits, flip in zip(offsets, bands, flips, strict=True)
            ],
            axis=-1,
        )

    per = max(1, _candidates() // n_probes)  # hashes whose probes fit in a block
    counts = (
        np.concatenate(
            [
                count[buckets(np.arange(s, min(s + per, len(values))))].sum(axis=(0, 2))
                for s in range(0, len(values), per)
            ]
        )
        if len(values)
        else np.zeros(0, np.int64)
    )
    best = np.full(len(values), 65, np.int64)
    top = np.zeros(len(values), np.int64)
    crowded = counts > min(8 * len(unique), _candidates())
    if crowded.any():
        best[crowded], top[crowded] = _closest(values[crowded], ref)
    rows = np.flatnonzero(~crowded)
    ends = np.cumsum(counts[rows])
    start = 0
    while start < len(rows):  # blocks of rows with at most _candidates() candidates
        room = ends[start] - counts[rows[start]] + _candidates()
        stop = min(start + per, max(start + 1, int(np.searchsorted(ends, room, "right"))))
        block = rows[start:stop]
        probes = buckets(block)
        shape = probes.shape
        probes = probes.ravel()
        n = count[probes]
        hit = n > 0
        n, low = n[hit], begin[probes[hit]]
        owner = np.broadcast_to(np.arange(len(block))[:, None], shape).ravel()[hit]
        query = np.broadcast_to(queries[:, block, None], shape).ravel()[hit]
        at = np.repeat(low - (np.cumsum(n) - n), n) + np.arange(n.sum())
        match = order[at]
        apart = _popcount(np.repeat(query, n) ^ unique[match])
        near = apart <= max_bits
        # The closest, then the first index of ties: one number to take the least of.
        score = apart[near].astype(np.int64) * len(ref) + first[match[near]]
        least = np.full(len(block), 65 * len(ref), np.int64)
        np.minimum.at(least, np.repeat(owner, n)[near], score)
        best[block], top[block] = np.divmod(least, len(ref))
        start = stop
    return _within(best, top, max_bits)


_BAND_BITS = 16  # the widest band: a table of 65,536 buckets
_PROBE = 2  # a bucket probed costs about as much as two hashes compared (timed at 4-12 bits)
_PLAN_SAMPLE = 20_000  # hashes the plan's costs are estimated on


def _band_plan(max_bits: int, ref: np.ndarray) -> list[int] | None:
    """The radius of each band (``len`` bands of bits dealt in turn, the first ones a bit
    wider) that costs least per orientation of a hash, in buckets probed and hashes compared
    (estimated on a sample of the distinct ``ref`` hashes, which crowd some buckets: flat
    images); None where comparing every hash costs less."""
    sample = ref[:: max(1, len(ref) // _PLAN_SAMPLE)]
    best, plan = len(ref), None
    for m in range(-(-64 // _BAND_BITS), 17):
        widths = [64 // m + (k < 64 % m) for k in range(m)]
        share = max_bits + 1  # radii + 1 to deal out, the wider bands first
        radii = [max(0, share // m + (k < share % m) - 1) for k in range(m)]
        cost = 0.0
        for k, (w, r) in enumerate(zip(widths, radii, strict=True)):
            filled = np.bincount(_band_key(sample, np.arange(k, 64, m))) / len(sample)
            # a probe's hashes: all of ref times the chance that two hashes share a bucket
            cost += _n_flips(w, r) * (_PROBE + len(ref) * (filled**2).sum())
        if cost < best:
            best, plan = cost, radii
    return plan


def _n_flips(width: int, radius: int) -> int:
    return sum(math.comb(width, j) for j in range(radius + 1))


def _flips(width: int, radius: int) -> np.ndarray:
    """The ``width``-bit numbers of at most ``radius`` set bits: the flips a band probes."""
    every = np.arange(2**width, dtype=np.uint64)
    return every[_popcount(every) <= radius].astype(np.int64)


def _band_key(values: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """The bits ``bits`` of each uint64 hash in ``values``, packed into a number."""
    key = np.zeros(values.shape, np.int64)
    for j, b in enumerate(bits):
        key |= ((values >> np.uint64(b)) & np.uint64(1)).astype(np.int64) << j
    return key


def _within(best: np.ndarray, top: np.ndarray, max_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """``best`` and ``top`` as :func:`_closest_within` gives them: 65 and 0 past ``max_bits``."""
    far = best > max_bits
    best[far], top[far] = 65, 0
    return best, top


def _candidates() -> int:
    return max(1, _SIMILARITIES // 8)  # candidates compared at once: about 40 bytes each


def _closest(values: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bits apart, index into ``ref``) of the closest ``ref`` hash to each of ``values`` in
    any of its eight orientations (the first of ties), every pair compared."""
    best = np.full(len(values), 65, np.int64)
    top = np.zeros(len(values), np.int64)
    for start in range(0, len(values), _BLOCK):
        rows = slice(start, start + _BLOCK)
        turns = _orientations(values[rows])
        n = len(turns[0])
        step = max(1, _SIMILARITIES // 2 // n)  # 8-byte XORs: 16 MiB at once
        for at in range(0, len(ref), step):
            apart = _popcount(turns[0][:, None] ^ ref[None, at : at + step])
            for turned in turns[1:]:
                np.minimum(apart, _popcount(turned[:, None] ^ ref[None, at : at + step]), out=apart)
            near = apart.argmin(axis=1)
            value = apart[np.arange(n), near]
            better = value < best[rows]  # views: set in place
            best[rows][better], top[rows][better] = value[better], at + near[better]
    return best, top


def _orientations(values: np.ndarray) -> list[np.ndarray]:
    """The perceptual hashes ``values`` (uint64) as their images would hash in each of their
    eight orientations (see ``_FLIPS``), the images as they are first."""
    bits = np.unpackbits(values.astype(">u8").view(np.uint8).reshape(-1, 8), axis=1)
    bits = bits.reshape(-1, 8, 8).transpose(0, 2, 1).reshape(-1, 64)
    turned = np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64)
    return [v ^ flip for v in (values, turned) for flip in _FLIPS]


def _popcount(x: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 (numpy < 2 has no bitwise_count: a byte table)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    return _BYTE_BITS[x.view(np.uint8)].reshape(*x.shape, 8).sum(axis=-1, dtype=np.uint8)


def _most_similar(
    rows: np.ndarray,
    rows_zero: np.ndarray,
    unit: np.ndarray,
    zero: np.ndarray,
    reference: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(cosine, index into ``reference``) of each unit row's most similar ``unit`` row among
    ``reference`` (the first of ties), taken a slice at a time: a block's similarities to
    every train image at once would take 1024 x 1.3 million floats (5 GB) on ImageNet, and a
    copy of every reference row as many bytes as the features."""
    best = np.full(len(rows), -np.inf, np.float32)
    top = np.zeros(len(rows), np.int64)
    step = max(1, _SIMILARITIES // len(rows))
    for start in range(0, len(reference), step):
        chunk = reference[start : start + step]
        sims = rows @ unit[chunk].T
        # All-zero rows have no direction, yet are the same features: cosine 1 between them.
        sims[np.ix_(rows_zero, zero[chunk])] = 1.0
        at = sims.argmax(axis=1)
        value = sims[np.arange(len(rows)), at]
        better = value > best
        best[better], top[better] = value[better], start + at[better]
    return best, top


def check_source(
    source: ImageSource,
    hashes: dict[str, str] | None = None,
    image_hashes: dict[str, int] | None = None,
) -> DataChecks:
    """The checks a source allows without features: exact duplicates by content hash
    (``hashes`` from :func:`content_hashes`), near-duplicates by perceptual hash
    (``image_hashes``; both from :func:`source_hashes` when ``hashes`` is not given), and
    class counts."""
    if hashes is None:
        hashes, image_hashes = source_hashes(source)
    return check_data(
        list(source.ids),
        source.labels,
        [SPLIT_NAMES[c] for c in source.splits],
        list(source.classes),
        hashes=[hashes[i] for i in source.ids],
        image_hashes=image_hashes,
    )


StoreRows = tuple[list[str], np.ndarray, list[str]]


def store_rows(store) -> StoreRows:
    """The ids, labels and split names of a store's rows (skipped rows left out), split by
    split (train, val, test): the order of the rows :func:`check_store` checks."""
    ids, labels, splits = [], [], []
    for split in SPLIT_NAMES:
        split_ids = store.ids(split)
        ids += split_ids
        labels.append(store.labels(split))
        splits += [split] * len(split_ids)
    return ids, np.concatenate(labels), splits


def hashed_contents(store: FeatureStore) -> bool:
    """Whether ``store``'s source fingerprint covers file contents (extracted with
    hash_contents), not file sizes and times."""
    described = store.attrs.get("source")
    return isinstance(described, dict) and bool(described.get("hash_contents"))


def extracted_from(
    store: FeatureStore, source: ImageSource, parts: Sequence[bytes] | None = None
) -> bool:
    """Whether ``store`` records the fingerprint of ``source`` as it is now: the same ids,
    labels, splits and files (sizes and times, or contents: :func:`hashed_contents`).
    ``parts``: the source's content fingerprint parts when already read (files read once)."""
    content = hashed_contents(store)
    now = source.fingerprint(content=content, parts=parts if content else None)
    return store.attrs.get("source_fingerprint") == now


def check_store(
    store, hashes: dict[str, str] | None = None, rows: StoreRows | None = None, **kwargs
) -> DataChecks:
    """The checks on a :class:`featpipe.store.FeatureStore` (skipped rows left out): exact
    duplicates by ``hashes`` (``{id: digest}``, from :func:`content_hashes`) when given, else
    by identical stored features; near-duplicates on its ``pooled`` layer when it has one, and
    by perceptual hash when ``image_hashes`` (from :func:`source_hashes`) is given. ``rows``:
    :func:`store_rows` of the store, when already read."""
    ids, labels, splits = store_rows(store) if rows is None else rows
    layer = NEAR_LAYER if NEAR_LAYER in store.layers else None
    features = None
    if layer:  # read into one float32 array, which the check then scales in place
        features = np.empty((len(ids), store.layer_info(layer)["dim"]), np.float32)
        filled = 0
        for split in SPLIT_NAMES:
            for block, _ in store.iter_chunks(layer, split):
                features[filled : filled + len(block)] = block
                filled += len(block)
    digests = None
    if hashes is not None:
        digests = [hashes[i] for i in ids]
    elif features is None:  # no pooled layer: identical rows of the first stored layer
        digests = [
            hashlib.sha256(row.tobytes()).hexdigest()
            for split in SPLIT_NAMES
            for block, _ in store.iter_chunks(store.layers[0], split)
            for row in block
        ]
    return check_data(
        ids,
        labels,
        splits,
        store.classes,
        hashes=digests,
        features=features,
        basis=CONTENT if hashes is not None else FEATURES,
        overwrite_features=True,
        **kwargs,
    )
