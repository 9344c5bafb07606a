"""Near-duplicate checks side by side: recall on edited copies of train images, false alarms
among distinct images, and the cost of hashing.

Compares the perceptual hash of the data checks (``featpipe.evaluate.leakage.perceptual_hash``,
a 64-bit DCT hash) with a difference hash (dHash, 9x8 grayscale thumbnail, written here) and,
with ``--features``, with the cosine of EfficientNet-Lite0 pooled features at 96 px (the
check used when the source is not at hand, threshold 0.99).

Data: the CIFAR-10 JPEGs of ``../shared/data/cifar10-jpg.tar.gz`` (extracted into ``--work``,
a temporary folder by default). Copies of ``--copies`` train images: resized 32->24->32,
JPEG quality 50, grayscale, shifted 1 and 2 px, 1 px cropped off each side then resized back,
brightness x1.15 and x0.85, turned a quarter and mirrored left to right; every copy saved as
JPEG (quality 90 unless said) as a dataset's copy would be. pHash is compared in its eight
orientations, as the data checks compare it (dHash as it is). Distinct pairs: the first
``--distinct`` test images against the first ``--distinct`` train images (4 million pairs by
default). ``--full`` also counts the test images of all 10,000 flagged against all 50,000
train images (this includes CIFAR-10's own near-duplicates across splits, about 3 % of its
test set by Barz & Denzler 2020), and times that comparison through the data checks' band
index against comparing every pair at 4, 8, 10 and 12 bits (both must find the same pairs).

    python benchmarks/near_duplicates.py --full --features
"""

from __future__ import annotations

import argparse
import io
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from featpipe.data import ImageFolderSource
from featpipe.evaluate.leakage import (
    NEAR_BITS,
    _closest,
    _closest_within,
    _orientations,
    _popcount,
    perceptual_hash,
    source_hashes,
)

TAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpg.tar.gz"
BITS = range(0, 17)
INDEX_BITS = (NEAR_BITS, 8, 10, 12)  # thresholds the index is timed at


def _jpeg(image: Image.Image, quality: int = 90) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _shift(image: Image.Image, px: int) -> Image.Image:
    a = np.asarray(image)
    a = np.pad(a, ((px, 0), (px, 0), (0, 0)), mode="edge")[: a.shape[0], : a.shape[1]]
    return Image.fromarray(a)


def _crop(image: Image.Image, px: int) -> Image.Image:
    w, h = image.size
    return image.crop((px, px, w - px, h - px)).resize((w, h), Image.Resampling.BICUBIC)


EDITS = {
    "resize 32->24->32": lambda im: _jpeg(
        im.resize((24, 24), Image.Resampling.BICUBIC).resize((32, 32), Image.Resampling.BICUBIC)
    ),
    "JPEG quality 50": lambda im: _jpeg(im, 50),
    "grayscale": lambda im: _jpeg(im.convert("L").convert("RGB")),
    "shift 1 px": lambda im: _jpeg(_shift(im, 1)),
    "shift 2 px": lambda im: _jpeg(_shift(im, 2)),
    "crop 1 px, resize back": lambda im: _jpeg(_crop(im, 1)),
    "brightness x1.15": lambda im: _jpeg(ImageEnhance.Brightness(im).enhance(1.15)),
    "brightness x0.85": lambda im: _jpeg(ImageEnhance.Brightness(im).enhance(0.85)),
    "rotate 90": lambda im: _jpeg(im.transpose(Image.Transpose.ROTATE_90)),
    "mirror": lambda im: _jpeg(im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)),
}


def dhash(image: Image.Image) -> int:
    """Difference hash: is each pixel of a 9x8 grayscale thumbnail brighter than its right
    neighbour."""
    a = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.LANCZOS), np.int16)
    return int.from_bytes(np.packbits((a[:, 1:] > a[:, :-1]).ravel()).tobytes(), "big")


# name: (hash, compared in its eight orientations as the data checks compare pHash)
HASHES = {"pHash (featpipe, 8 orientations)": (perceptual_hash, True), "dHash": (dhash, False)}


def _apart(a: np.ndarray, b: np.ndarray, turned: bool) -> np.ndarray:
    """Bits between hashes ``a`` and ``b`` (broadcast), in ``a``'s closest orientation if
    ``turned``."""
    shape = a.shape
    turns = _orientations(a.ravel()) if turned else [a.ravel()]
    return np.min([_popcount(t.reshape(shape) ^ b) for t in turns], axis=0)


def compare_index(test: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Times the data checks' comparison (8 orientations) two ways, every pair and the band
    index of ``leakage._near_hashes``, at each of ``INDEX_BITS``; both must find the same
    pairs. Returns the bits from each test hash to its closest train hash."""
    t0 = time.perf_counter()
    near, top = _closest(test, train)  # the same at every threshold
    every = time.perf_counter() - t0
    print(f"comparing {len(test):,} x {len(train):,} hashes in 8 orientations:")
    for bits in INDEX_BITS:
        t0 = time.perf_counter()
        best, found = _closest_within(test, train, bits)
        index = time.perf_counter() - t0
        within = near <= bits
        assert np.array_equal(np.where(within, near, 65), best), f"other bits at {bits}"
        assert np.array_equal(np.where(within, top, 0), found), f"other pairs at {bits}"
        print(
            f"  within {bits:>2} bits: every pair {every:.2f} s, band index {index:.2f} s "
            f"({every / index:.1f}x); same pairs: True ({int(within.sum())} test hashes)"
        )
    return near


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tar", type=Path, default=TAR)
    ap.add_argument("--work", type=Path, default=None, help="folder to extract into")
    ap.add_argument("--copies", type=int, default=500, help="train images copied per edit")
    ap.add_argument("--distinct", type=int, default=2000, help="test and train images paired")
    ap.add_argument("--full", action="store_true", help="also scan 10k test vs 50k train")
    ap.add_argument("--features", action="store_true", help="also EfficientNet-Lite0 cosines")
    args = ap.parse_args()
    if not args.tar.is_file():
        raise SystemExit(f"{args.tar} not found; pass --tar (see ../shared/data/README.md).")
    work = args.work or Path(tempfile.mkdtemp(prefix="near_dup_"))
    if not (work / "train").is_dir():
        with tarfile.open(args.tar) as tar:
            tar.extractall(work, filter="data")
    source = ImageFolderSource(work)
    train, test = source.indices("train"), source.indices("test")
    rng = np.random.default_rng(0)
    originals = [source.load(int(i)) for i in rng.choice(train, args.copies, replace=False)]
    copies = {name: [edit(im) for im in originals] for name, edit in EDITS.items()}
    a = [source.load(int(i)) for i in test[: args.distinct]]
    b = [source.load(int(i)) for i in train[: args.distinct]]

    print(
        f"{args.copies} copies per edit; {len(a)} x {len(b)} = {len(a) * len(b):,} distinct pairs"
    )
    print(f"The data checks flag pHash within {NEAR_BITS} bits (leakage.NEAR_BITS).")
    for name, (fn, turned) in HASHES.items():
        h0 = np.array([fn(im) for im in originals], np.uint64)
        ha = np.array([fn(im) for im in a], np.uint64)
        hb = np.array([fn(im) for im in b], np.uint64)
        bits = {
            e: _apart(np.array([fn(im) for im in c], np.uint64), h0, turned)
            for e, c in copies.items()
        }
        distinct = np.bincount(
            np.concatenate(
                [
                    _apart(ha[s : s + 256, None], hb[None], turned).ravel()
                    for s in range(0, len(ha), 256)
                ]
            ),
            minlength=65,
        ).cumsum()
        print(f"\n{name}: recall % of copies within N bits; distinct pairs within N bits")
        print(f"{'N':>3} " + " ".join(f"{e[:12]:>12}" for e in EDITS) + f" {'distinct':>9}")
        for n in BITS:
            recall = " ".join(f"{100 * (bits[e] <= n).mean():12.1f}" for e in EDITS)
            print(f"{n:>3} {recall} {distinct[n]:>9}")
    if args.full:
        t0 = time.perf_counter()
        _, hashes = source_hashes(source)
        took = time.perf_counter() - t0
        print(
            f"\nsource_hashes (sha256 + pHash) of all {len(source)} files: {took:.1f} s, "
            f"{1e3 * took / len(source):.2f} ms per image"
        )
        all_hashes = np.array([hashes[i] for i in source.ids], np.uint64)
        near = compare_index(all_hashes[test], all_hashes[train])
        print("test images (of 10,000) within N bits of a train image (whole set):")
        for n in BITS:
            print(f"{n:>3} {int((near <= n).sum()):>6}")
    if args.features:
        from featpipe import Embedder

        emb = Embedder("efficientnet_lite0", image_size=96, batch_size=64).fit()
        t0 = time.perf_counter()
        f0 = emb.transform(originals)
        per_image = (time.perf_counter() - t0) / len(originals)

        def unit(x: np.ndarray) -> np.ndarray:
            return x / np.linalg.norm(x, axis=1, keepdims=True)

        f0 = unit(f0)
        print(f"\nEfficientNet-Lite0 pooled features at 96 px ({1e3 * per_image:.1f} ms per image)")
        print("edit: cosine of copy vs original (min / median), % at or above 0.99")
        for e, c in copies.items():
            cos = (unit(emb.transform(c)) * f0).sum(axis=1)
            share = 100 * (cos >= 0.99).mean()
            print(f"  {e:24} {cos.min():.3f} / {np.median(cos):.3f}  {share:5.1f} %")
        fa, fb = unit(emb.transform(a)), unit(emb.transform(b))
        sims = fa @ fb.T
        print(
            f"distinct pairs: highest cosine {sims.max():.3f}; {int((sims >= 0.99).sum())} at "
            "or above 0.99"
        )


if __name__ == "__main__":
    main()
