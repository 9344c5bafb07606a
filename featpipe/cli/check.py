"""``featpipe check STORE``: the report's data checks on a feature store alone."""

from __future__ import annotations

import argparse
import json

EPILOG = """\
examples:
  featpipe check data/cache/<store>.h5
  featpipe check data/cache/<store>.h5 --source digits   # content and perceptual hashes
  featpipe check data/cache/<store>.h5 --json

Checks: the same image in two splits, and the same image under more than one label in any
splits (by content hash with --source, else by identical stored features); test images with
a near-duplicate in train or val (heads are refit on train+val): with --source, a perceptual
hash of each image within --hash-bits bits (finds resized, recompressed, grayscale and
brightened copies), and always cosine >= --cosine on the stored pooled features (misses most
such copies); and classes with fewer than --min-per-class
validation or test images. A store holding features that are not finite (NaN, inf) in any
layer is an error naming them. With --source, a warning when its files are not those the
store was extracted from (by the store's record of their sizes and times, or contents).
Exit status 0 when nothing was found, 1 when something was, 2 on an error.
"""


def register(subparsers) -> None:
    from featpipe.evaluate.leakage import MIN_PER_CLASS, NEAR_BITS, NEAR_COSINE

    p = subparsers.add_parser(
        "check",
        help="look for duplicates across splits, label conflicts, near-duplicates and small "
        "classes in a store",
        description="The report's data checks on one feature store.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("store", metavar="STORE", help="path of a .h5 feature store")
    p.add_argument(
        "--source",
        metavar="SOURCE",
        help="the image source the store was extracted from (as given to `featpipe extract`), "
        "to find exact duplicates by content hash rather than by identical features, and "
        "near-duplicates by perceptual hash",
    )
    p.add_argument(
        "--cosine",
        type=float,
        default=None,
        help=f"near-duplicate threshold (default: {NEAR_COSINE})",
    )
    p.add_argument(
        "--hash-bits",
        type=int,
        default=None,
        help="near-duplicate threshold in perceptual-hash bits, with --source "
        f"(default: {NEAR_BITS})",
    )
    p.add_argument(
        "--min-per-class",
        type=int,
        default=None,
        help=f"fewest val/test images per class (default: {MIN_PER_CLASS})",
    )
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    from featpipe.errors import ConfigError, NonFiniteFeaturesError
    from featpipe.evaluate.leakage import check_store, source_hashes, store_rows
    from featpipe.store import FeatureStore
    from featpipe.store.reader import not_finite_message

    # Before the store is read: with these values a check finds nothing and reports it clean.
    if args.cosine is not None and not 0 < args.cosine <= 1:  # also NaN
        raise ConfigError(
            f"--cosine {args.cosine} is not a cosine similarity in (0, 1]; give e.g. --cosine "
            "0.98, or leave it out for 0.99."
        )
    if args.hash_bits is not None and not 0 <= args.hash_bits < 64:
        raise ConfigError(
            f"--hash-bits {args.hash_bits} is not a number of bits a 64-bit hash can differ "
            "by and still be a near-duplicate; give 0 to 63, or leave it out for 4."
        )
    if args.hash_bits is not None and not args.source:
        raise ConfigError(
            "--hash-bits sets the perceptual-hash check, which hashes the images: give the "
            "source too (--source SOURCE), or leave --hash-bits out."
        )
    if args.min_per_class is not None and args.min_per_class < 1:
        raise ConfigError(
            f"--min-per-class {args.min_per_class} is not a number of images; give 1 or more, "
            "or leave it out for 10."
        )
    store = FeatureStore(args.store)  # a missing one is StoreNotFoundError, with its hint
    # Before the source is hashed (minutes on a large one).
    store.require_complete("check")
    # Every layer, not only the one the checks read: a store no head can use is not clean.
    found = store.non_finite()
    if found:
        raise NonFiniteFeaturesError(not_finite_message(store.path, found))
    hashes = image_hashes = None
    rows = store_rows(store)  # read once, for the checks and the source's comparison
    if args.source:
        from featpipe.data import open_source

        source = open_source(args.source)
        parts: list[bytes] = []  # the files' contents, hashed once for both uses
        hashes, image_hashes = source_hashes(source, read=parts)
        missing = [i for i in rows[0] if i not in hashes]
        if missing:
            raise ConfigError(
                f"{args.source} does not hold the store's images ({len(missing)} ids missing, "
                f"e.g. {missing[0]!r}); give the source the store was extracted from."
            )
        _warn_if_other_source(store, rows, source, parts, args.source)
    options = {
        k: v
        for k, v in (
            ("threshold", args.cosine),
            ("hash_bits", args.hash_bits),
            ("min_per_class", args.min_per_class),
        )
        if v is not None
    }
    checks = check_store(store, hashes, rows, image_hashes=image_hashes, **options)
    if args.json:
        print(json.dumps(checks.to_json(), indent=1))
    else:
        counts = ", ".join(f"{n} {s}" for s, n in checks.counts.items())
        print(f"{store.path}: {counts} images")
        for line in checks.lines():
            print(f"- {line}")
    return 1 if checks.findings else 0


def _warn_if_other_source(store, rows, source, parts: list[bytes], given: str) -> None:
    """Warn when the files of ``source`` are not those the store was extracted from, as far
    as its recorded fingerprint tells (file sizes and times, or contents for a store made with
    hash_contents): another folder with the same file names would be hashed in their place.
    Only when ``source`` lists the store's rows (ids, labels, splits) as they are: else (val
    carved by `featpipe run`, a subsample, skipped rows) the fingerprint differs for those. A
    warning, not an error: copying a folder changes file times, not images. ``rows``: the
    store's rows split by split (``store_rows``); ``parts``: the source's content parts."""
    import warnings

    import numpy as np

    from featpipe.data.source import SPLIT_NAMES
    from featpipe.evaluate.leakage import extracted_from, hashed_contents

    ids, _, splits = rows
    same_rows = (
        list(source.classes) == list(store.classes)
        and list(source.ids) == store.ids()
        and np.array_equal(source.labels, store.labels())
        # each row in the same split (the store's rows are grouped by split)
        and list(zip(ids, splits, strict=True))
        == [(source.ids[i], s) for s in SPLIT_NAMES for i in source.indices(s)]
    )
    if not same_rows or store.attrs.get("source_fingerprint") is None:
        return
    if extracted_from(store, source, parts):
        return
    what = "contents" if hashed_contents(store) else "sizes or modification times"
    warnings.warn(
        f"The files of {given} are not those {store.path} was extracted from: their {what} "
        f"differ from the store's record. If {given} is another folder with the same file "
        "names, the duplicates and near-duplicates found are of its images, not the store's: "
        "give the source the store was extracted from (or re-extract the store from this one).",
        UserWarning,
        stacklevel=2,
    )
