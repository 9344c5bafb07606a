"""Command-line options shared by several subcommands."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from featpipe.backbones.preprocessing import MAX_IMAGE_SIZE
from featpipe.data import ImageSource, subsample
from featpipe.data.images import DECODES, jpeg_decoder
from featpipe.data.source import SPLIT_NAMES
from featpipe.errors import ConfigError

if TYPE_CHECKING:
    from featpipe.store import FeatureStore


def _image_size(text: str) -> int:
    """An ``--image-size`` value: whole pixels in the range every backbone's preprocessing
    takes (refused by argparse, naming the option, before any data is opened)."""
    try:
        size = int(text)
    except ValueError:
        size = 0
    if not 8 <= size <= MAX_IMAGE_SIZE:
        raise argparse.ArgumentTypeError(
            f"must be a whole number of pixels from 8 to {MAX_IMAGE_SIZE}; got {text!r}. "
            "Leave it out to use the size the weights were trained at."
        )
    return size


def add_image_size_option(parser: argparse.ArgumentParser) -> None:
    """``--image-size N``: feed the backbone at another size, keeping its crop fraction."""
    parser.add_argument(
        "--image-size",
        type=_image_size,
        default=None,
        metavar="N",
        help="input size in pixels (default: the weights' own)",
    )


def add_decode_option(parser: argparse.ArgumentParser) -> None:
    """``--decode {exact,fast}``: the scale JPEG files decode at."""
    decoder = jpeg_decoder()
    if decoder == "pillow":
        decoder += ' (pip install "featpipe[jpeg]": simplejpeg, the same pixels, sooner)'
    parser.add_argument(
        "--decode",
        choices=DECODES,
        default="exact",
        help="JPEG decoding: exact (full size, the default) or fast (libjpeg DCT scaling to "
        "the smallest 1/2, 1/4 or 1/8 scale that still covers the resize; faster on CPU, "
        f"features change a little: see benchmarks/README.md). JPEGs decode with {decoder}",
    )


def add_force_option(parser: argparse.ArgumentParser, what: str = "--out") -> None:
    """``--force``: every command's one way to replace an output that exists. Without it the
    command refuses to write there (``check_out_file(..., replace=args.force)``): what the file
    holds may not come back from a re-run (another store's head, another run's results)."""
    parser.add_argument("--force", action="store_true", help=f"replace {what} if it exists")


def _image_count(text: str) -> int:
    """A ``--limit-*`` value, refused by argparse (naming the option) unless 0 or more."""
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of images; give 0 or more")
    return n


def add_limit_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--limit-train/val/test N``: a stratified, seeded subset of each split."""
    for split in SPLIT_NAMES:
        parser.add_argument(
            f"--limit-{split}",
            type=_image_count,
            metavar="N",
            help=f"keep a stratified sample of at most N {split} images",
        )


def apply_limits(source: ImageSource, args: argparse.Namespace, seed: int) -> ImageSource:
    """The source cut down by the ``--limit-*`` options (unchanged when none is given)."""
    limits = {s: getattr(args, f"limit_{s}") for s in SPLIT_NAMES}
    limits = {s: n for s, n in limits.items() if n is not None}
    if not limits:
        return source
    kept = subsample(source, limits, seed=seed)
    if len(kept.ids) == 0 and len(source.ids) > 0:  # not the store's 'got 0, 0, 0' later
        given = " ".join(f"--limit-{s} {n}" for s, n in limits.items())
        has = ", ".join(f"{n} {s}" for s, n in source.split_counts().items() if n)
        raise ConfigError(
            f"{given} leaves no images ({has} in the source): give a limit above 0 for a "
            "split that has images, or leave the option out to keep that split whole."
        )
    return kept


def pick_layer(store: FeatureStore, layer: str | None) -> str:
    """``--layer``, or the store's only layer when it is not given."""
    if layer is not None:
        return layer
    if len(store.layers) == 1:
        return store.layers[0]
    raise ConfigError(
        f"{store.path} holds several layers ({', '.join(store.layers)}); choose one with --layer."
    )
