"""Seeded, stratified train/val/test assignment and subsampling."""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Collection, Iterable, Sequence

import numpy as np

from featpipe.data.source import (
    SPLIT_CODES,
    ImageSource,
    count_splits,
    split_alias,
    split_code,
)
from featpipe.errors import ConfigError, SourceError
from featpipe.words import agrees, listed

TRAIN, VAL, TEST = (SPLIT_CODES[name] for name in ("train", "val", "test"))


def stratified_split(
    labels: np.ndarray,
    val_fraction: float = 0.0,
    test_fraction: float = 0.0,
    seed: int = 0,
    ids: Sequence[str] | None = None,
) -> np.ndarray:
    """uint8 split codes (``SPLIT_CODES``) for ``labels``, stratified per class and seeded.

    Each class gives ``round(n_class * fraction)`` rows (give or take one, so that the totals
    match ``round(N * fraction)``) to val and to test; every class keeps at least one train row.
    The same labels, fractions and seed always give the same split. With ``ids`` (unique, one
    per row) each class's rows are drawn in the order of their ids, so the same images listed
    in another order get the same splits; rows already in id order split as without ids.
    """
    _check_fractions(val_fraction, test_fraction)
    _check_seed(seed)
    labels = np.asarray(labels)
    codes = np.full(len(labels), TRAIN, dtype=np.uint8)
    if len(labels) == 0 or val_fraction == test_fraction == 0:
        return codes
    rng = np.random.default_rng(seed)
    classes, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    n_val = _allocate(sizes, _round_half_up(len(labels) * val_fraction), rng)
    n_test = _allocate(sizes, _round_half_up(len(labels) * test_fraction), rng)
    # A class too small for both quotas gives up val rows first: test is what gets reported.
    excess = np.maximum(n_val + n_test - (sizes - 1), 0)
    from_val = np.minimum(excess, n_val)
    n_val -= from_val
    n_test -= excess - from_val
    # rows in id order (sorted ids: each class's rows as flatnonzero lists them)
    order = np.arange(len(labels)) if ids is None else id_order(ids, len(labels))
    for c in range(len(classes)):
        rows = rng.permutation(order[inverse[order] == c])
        codes[rows[: n_val[c]]] = VAL
        codes[rows[n_val[c] : n_val[c] + n_test[c]]] = TEST
    return codes


def id_order(ids: Sequence[str], n: int) -> np.ndarray:
    """The positions of ``n`` rows sorted by their ids (``arange(n)`` for ids in order): the
    splits' draws and the heads' fit rows follow it, so the same images listed in another
    order are drawn alike."""
    if len(ids) != n:
        raise ConfigError(f"Drawing {n} rows needs one id per row; got {len(ids)} ids.")
    # numpy strings sort by code point, as str does, and stably: sorted()'s order, without
    # a Python object per row (a store's ids are read as one object array).
    return np.argsort(np.asarray(ids, dtype=str), kind="stable").astype(np.int64, copy=False)


def require_train(splits: np.ndarray, origin: str, fix: str) -> None:
    """Raise SourceError when the split codes a source gives name no train row: heads fit
    on train, and carving val/test out of train would leave nothing either."""
    if not (np.asarray(splits) == TRAIN).any():
        counts = ", ".join(f"{n} {name}" for name, n in count_splits(splits).items() if n)
        raise SourceError(
            f"No train rows in {origin} (it gives {counts or 'none'}); featpipe needs train rows "
            f"to fit on. {fix}"
        )


def assign_splits(
    labels: np.ndarray,
    splits: np.ndarray | None,
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    origin: str,
    classes: Sequence[str] | None = None,
    ids: Sequence[str] | None = None,
) -> np.ndarray:
    """Split codes for a source: ``splits`` as given (or all train when None), with val and test
    carved out of the train rows by their fractions wherever the source names no such rows,
    drawn in the order of the rows' ``ids`` (see :func:`stratified_split`).

    A fraction for a split the source already has is ignored with a warning naming ``origin``,
    as are, when ``classes`` (the label names) are given, classes that the given splits leave
    without a train row: no head can predict them, so each of their images counts as an error.
    """
    _check_fractions(val_fraction, test_fraction)
    labels = np.asarray(labels)
    splits = np.full(len(labels), TRAIN, np.uint8) if splits is None else splits
    splits = np.asarray(splits, dtype=np.uint8).copy()
    carve = {}
    for name, fraction in (("val", val_fraction), ("test", test_fraction)):
        present = bool((splits == SPLIT_CODES[name]).any())
        if present and fraction:
            warnings.warn(
                f"{name}_fraction={fraction} is ignored: {origin} already has {name} rows.",
                UserWarning,
                stacklevel=3,
            )
        carve[name] = 0.0 if present else fraction
    train = np.flatnonzero(splits == TRAIN)
    if classes is not None:
        _warn_untrained(labels, splits, classes, origin)
    train_ids = None if ids is None else [ids[r] for r in train]
    splits[train] = stratified_split(labels[train], carve["val"], carve["test"], seed, train_ids)
    _warn_carved_nothing(splits[train], carve, origin)
    return splits


def _warn_carved_nothing(codes: np.ndarray, carve: dict[str, float], origin: str) -> None:
    """Warn, in one line, of each fraction asked for that carved no row from the train rows
    ``codes`` were drawn from: the run would go on as if it had not been asked."""
    n = len(codes)
    said = []  # none without train rows: require_train refuses those
    for name, fraction in carve.items():
        if not fraction or not n or (codes == SPLIT_CODES[name]).any():
            continue
        why, fix = why_carved_nothing(name, n, fraction)
        said.append(
            f"{name}_fraction={fraction:g} carved no {name} row from the {n} train rows "
            f"of {origin} ({why}). {fix}, or give the source {name} rows."
        )
    if said:
        warnings.warn(" ".join(said), UserWarning, stacklevel=4)


def why_carved_nothing(name: str, n: int, fraction: float) -> tuple[str, str]:
    """Why a ``name``_fraction ``fraction`` of ``n`` train rows carved no row, and the fix
    (a sentence without its end): the least fraction, in hundredths, that carves one."""
    if _round_half_up(n * fraction) == 0:
        least = math.ceil(50 / n) / 100  # n x least rounds to 1
        return f"{n} x {fraction:g} rounds to 0", f"Use a {name}_fraction of at least {least:g}"
    why = "every class keeps a train row, and these classes have too few to spare"
    return why, "Use more train images"


def warn_unread_split_column(
    column: str, values: dict[str, Iterable[object]], origin: str, fix: str
) -> None:
    """Warn when ``column``, which featpipe reads no split from, holds only split names (any
    alias, blank cells aside) and, in some rows, another split than the one they were read as
    (``values``: {split name: the column's values in the rows read as that split}): a
    'subset' or 'fold' column, or a table's 'split', whose test rows would be train rows."""
    named = {
        split: {str(v).strip() for v in found if v is not None} - {""}
        for split, found in values.items()
    }
    words = set().union(*named.values())
    if not words or any(split_alias(w) is None for w in words):
        return
    read_as = sorted({(w, split) for split, found in named.items() for w in found})
    moved = [
        f"its {w!r} rows are read as {split}" for w, split in read_as if split_alias(w) != split
    ]
    if moved:
        warnings.warn(
            f"{origin}: column {column!r} holds split names ({', '.join(sorted(words))}), but "
            f"featpipe reads no split from it: {'; '.join(moved[:3])}. {fix}",
            UserWarning,
            stacklevel=3,
        )


def _warn_untrained(
    labels: np.ndarray, splits: np.ndarray, classes: Sequence[str], origin: str
) -> None:
    untrained = _untrained(labels, splits)
    if len(untrained):
        names = _class_list(classes, untrained)
        warnings.warn(
            f"In {origin}, {agrees(len(untrained), 'class', 'classes')} {names} "
            f"{agrees(len(untrained), 'has', 'have')} val or test rows but no train row: "
            "no head can predict them, so each of their images counts as an error. Give each "
            "class some train rows, or leave those rows out.",
            UserWarning,
            stacklevel=4,
        )


def _untrained(labels: np.ndarray, splits: np.ndarray) -> np.ndarray:
    """The labels that val or test rows have and no train row has, sorted."""
    return np.setdiff1d(labels[splits != TRAIN], labels[splits == TRAIN])


def _class_list(classes: Sequence[str], codes: np.ndarray) -> str:
    """The names of the classes ``codes``, the first five, for a warning."""
    return listed((repr(classes[c]) for c in codes), 5, total=len(codes))


def subsample(source: ImageSource, per_split: dict[str, int], seed: int = 0) -> ImageSource:
    """A seeded, class-stratified subset with at most ``n`` rows of each split named in
    ``per_split`` (e.g. ``{"train": 5000, "test": 1000}``); splits not named are kept whole.
    Rows are drawn in the order of their ids (see :func:`stratified_split`) and keep their
    original order."""
    _check_seed(seed)
    labels = np.asarray(source.labels)
    named = {split_code(name): n for name, n in per_split.items()}
    for name, n in per_split.items():
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
            raise ConfigError(
                f"subsample needs a count >= 0 for each split; got {name}={n!r}. "
                "Write e.g. {'train': 5000, 'test': 1000}."
            )
    keep = [np.flatnonzero(~np.isin(source.splits, list(named)))]
    order = id_order(source.ids, len(labels))
    for code, n in named.items():
        rows = order[np.asarray(source.splits)[order] == code]
        if len(rows) <= n:
            keep.append(rows)
            continue
        # one generator per split, so that no split's limit (nor the order of the limits'
        # keys) changes the rows kept of another; train's is the seed's own, as it always
        # was, so that a limited train split keeps the rows it had
        rng = np.random.default_rng(seed if code == TRAIN else [seed, code])
        classes, inverse, sizes = np.unique(labels[rows], return_inverse=True, return_counts=True)
        counts = _allocate(sizes, int(n), rng)
        for c in range(len(classes)):
            keep.append(rng.choice(rows[inverse == c], size=counts[c], replace=False))
    rows = np.sort(np.concatenate(keep))
    splits = np.asarray(source.splits)
    # classes the source trains on that the limits leave with no train row (assign_splits
    # already warned of those the source itself gives none)
    dropped = np.setdiff1d(_untrained(labels[rows], splits[rows]), _untrained(labels, splits))
    if len(dropped):
        names = _class_list(source.classes, dropped)
        warnings.warn(
            f"Subsampling to {per_split} leaves {agrees(len(dropped), 'class', 'classes')} "
            f"{names} with val or test rows "
            "but no train row: no head can predict them, so each of their images counts as an "
            f"error. Keep at least one train row per class ({len(source.classes)} classes).",
            UserWarning,
            stacklevel=2,
        )
    return source.subset(rows)


def nested_subsets(
    labels: np.ndarray, sizes: Sequence[int], seed: int = 0, ids: Sequence[str] | None = None
) -> dict[int, np.ndarray]:
    """Seeded, class-stratified, nested subsets of rows: ``{n: sorted positions in labels}``.

    Every row gets a rank: its place in a seeded shuffle of its own class, as a fraction of
    the class size (ties between classes broken at random). The subset of size n is the n
    lowest ranks, so a larger subset holds every smaller one, and each class fills it in
    proportion to its size (within one row). With ``ids`` the rows are drawn in the order of
    their ids (see :func:`stratified_split`)."""
    _check_seed(seed)
    labels = np.asarray(labels)
    for n in sizes:
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 0 < n <= len(labels):
            raise ConfigError(
                f"A subset size must be an integer from 1 to the {len(labels)} rows; got {n!r}."
            )
    rng = np.random.default_rng(seed)
    order = np.arange(len(labels)) if ids is None else id_order(ids, len(labels))
    rank, tie = np.empty(len(labels)), np.empty(len(labels))
    for c in np.unique(labels):
        rows = order[labels[order] == c]
        rank[rng.permutation(rows)] = (np.arange(len(rows)) + 0.5) / len(rows)
    tie[order] = rng.random(len(labels))
    drawn = np.lexsort((tie, rank))
    return {int(n): np.sort(drawn[:n]) for n in sizes}


def with_train_ids(source: ImageSource, ids: Collection[str]) -> ImageSource:
    """``source`` with only the train rows whose id is in ``ids``; val and test kept whole."""
    ids = set(ids)
    keep = [r for r, sid in enumerate(source.ids) if source.splits[r] != TRAIN or sid in ids]
    return source.subset(keep)


def train_subset(source: ImageSource, size: int, seed: int = 0) -> ImageSource:
    """``source`` with a seeded, stratified subset of ``size`` train rows (see
    :func:`nested_subsets`: the subsets of one seed are nested); val and test kept whole."""
    train = source.indices("train")
    if isinstance(size, numbers.Integral) and size > len(train):
        raise ConfigError(
            f"A training subset of {size} images needs at least that many; the source has "
            f"{len(train)} train images. Use a smaller size."
        )
    labels, ids = np.asarray(source.labels)[train], [source.ids[r] for r in train]
    rows = train[nested_subsets(labels, [size], seed, ids)[int(size)]]
    return with_train_ids(source, [source.ids[r] for r in rows])


def _allocate(sizes: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """Share ``total`` rows among classes in proportion to ``sizes`` (largest remainder, ties
    broken at random): each class gets the floor or the ceiling of its exact share."""
    exact = sizes * (total / sizes.sum())
    counts = np.floor(exact).astype(np.int64)
    remainder = exact - counts
    order = np.lexsort((rng.random(len(sizes)), -remainder))
    counts[order[: total - counts.sum()]] += 1
    return np.minimum(counts, sizes)


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(f, bool) or not isinstance(f, numbers.Real) or not 0 <= f < 1:
            raise ConfigError(f"{name} must be a number in [0, 1); got {f!r}.")
    if val_fraction + test_fraction >= 1:
        raise ConfigError(
            f"val_fraction + test_fraction must be below 1 so that training rows remain; got "
            f"{val_fraction} + {test_fraction} = {val_fraction + test_fraction}."
        )


def _check_seed(seed: int) -> None:
    # numpy's generators take no negative seed
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ConfigError(
            f"seed must be an integer >= 0 (splits are reproducible); got {seed!r}. "
            "Use e.g. seed=0."
        )
