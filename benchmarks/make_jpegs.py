"""Make a folder of realistic JPEGs for throughput benchmarks from the CIFAR-10 archive.

CIFAR-10's 32x32 images are upscaled (PIL bicubic) to about photo size and saved at JPEG
quality 90, as ``OUT/<class>/NNNNN.jpg``, the same number per class. Decoding and resizing such
files costs what it costs for ordinary photo datasets, which is what a data path is measured on.

    python benchmarks/make_jpegs.py OUT --n 5000 [--size 500x375] [--archive PATH]
    python benchmarks/make_jpegs.py OUT --n 5000 --mixed    # the harder case for a GPU path

``--mixed`` makes the set less uniform, as real datasets are: sizes cycle through
MIXED_SIZES (landscape, portrait, square, large), and every PROGRESSIVE_EVERY-th file is a
progressive JPEG (which nvJPEG cannot batch-decode in hardware; featpipe's GPU path decodes
those in its workers).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tarfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

_ROOT = Path(__file__).resolve().parents[1]
# $CIFAR_TAR, else data/device/ (it travels to a lent GPU machine: gpu_prepare.sh), else ../shared.
_ARCHIVES = [
    _ROOT / "data/device/cifar10-jpg.tar.gz",
    _ROOT.parent / "shared/data/cifar10-jpg.tar.gz",
]
DEFAULT_ARCHIVE = Path(
    os.environ.get("CIFAR_TAR") or next((p for p in _ARCHIVES if p.exists()), _ARCHIVES[-1])
)
DEFAULT_SIZE = (500, 375)
QUALITY = 90
MIXED_SIZES = ((500, 375), (375, 500), (640, 480), (400, 400), (1024, 683), (333, 500))
PROGRESSIVE_EVERY = 8


def parse_size(text: str) -> tuple[int, int]:
    """``"500x375"`` -> (500, 375)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 500x375; got {text!r}") from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"size must be positive; got {text!r}")
    return width, height


def _upscale(job: tuple[bytes, Path, tuple[int, int], bool]) -> int:
    data, out, size, progressive = job
    with Image.open(io.BytesIO(data)) as img:
        big = img.convert("RGB").resize(size, Image.Resampling.BICUBIC)
    big.save(out, "JPEG", quality=QUALITY, progressive=progressive)
    return out.stat().st_size


def make_jpegs(
    out: str | Path,
    n: int,
    *,
    size: tuple[int, int] = DEFAULT_SIZE,
    archive: str | Path = DEFAULT_ARCHIVE,
    workers: int | None = None,
    mixed: bool = False,
) -> Path:
    """Write ``n`` upscaled CIFAR-10 training images (balanced over classes) under ``out``.

    Reuses ``out`` when it already holds exactly ``n`` JPEGs (and refuses one holding some
    other number). Returns ``out``.
    """
    out, archive = Path(out), Path(archive)
    if n < 1:
        raise ValueError(f"n must be at least 1; got {n}")
    existing = len(list(out.glob("*/*.jpg"))) if out.is_dir() else 0
    if existing == n:
        return out
    if existing:
        raise ValueError(
            f"{out} already holds {existing} JPEGs, not {n}; remove it or choose another folder."
        )
    if not archive.is_file():
        raise FileNotFoundError(
            f"CIFAR-10 archive {str(archive)!r} not found; pass --archive PATH "
            "(cifar10-jpg.tar.gz, see ../shared/data/README.md)."
        )
    jobs = _read_jobs(archive, out, n, size)
    if mixed:
        jobs = [
            (data, path, MIXED_SIZES[i % len(MIXED_SIZES)], i % PROGRESSIVE_EVERY == 0)
            for i, (data, path, _, _) in enumerate(jobs)
        ]
    with (
        ProcessPoolExecutor(workers) as pool,
        tqdm(total=len(jobs), unit="img", desc=f"writing {out}") as bar,
    ):
        for _ in pool.map(_upscale, jobs, chunksize=32):
            bar.update()
    return out


def _read_jobs(
    archive: Path, out: Path, n: int, size: tuple[int, int]
) -> list[tuple[bytes, Path, tuple[int, int], bool]]:
    """The first ``n // 10`` (or one more) training images of each class, read from the tar."""
    classes = 10
    quota = {c: n // classes + (1 if c < n % classes else 0) for c in range(classes)}
    names: dict[str, int] = {}
    jobs: list[tuple[bytes, Path, tuple[int, int], bool]] = []
    taken: dict[str, int] = {}
    with tarfile.open(archive) as tar:
        for member in tar:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) < 3 or parts[-3] != "train":
                continue
            cls = parts[-2]
            index = names.setdefault(cls, len(names))
            if index >= classes or taken.get(cls, 0) >= quota[index]:
                continue
            folder = out / cls
            folder.mkdir(parents=True, exist_ok=True)
            data = tar.extractfile(member).read()
            jobs.append((data, folder / f"{taken.get(cls, 0):05d}.jpg", size, False))
            taken[cls] = taken.get(cls, 0) + 1
            if len(jobs) == n:
                break
    if len(jobs) < n:
        raise ValueError(f"{archive} has only {len(jobs)} usable training images; asked for {n}.")
    return jobs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to write OUT/<class>/NNNNN.jpg into")
    parser.add_argument("--n", type=int, default=5000, help="number of images (default 5000)")
    parser.add_argument("--size", type=parse_size, default=DEFAULT_SIZE, help="WxH, 500x375")
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument(
        "--mixed", action="store_true", help="mixed sizes and some progressive files"
    )
    args = parser.parse_args(argv)
    try:
        make_jpegs(args.out, args.n, size=args.size, archive=args.archive, mixed=args.mixed)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    sizes = "mixed sizes" if args.mixed else f"{args.size[0]}x{args.size[1]}"
    print(f"{args.n} JPEGs at {sizes} in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
