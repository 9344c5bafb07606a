"""``featpipe cache list`` and ``featpipe cache prune``: what a cache folder holds, and
cleaning it without touching a store that is being written."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from featpipe.errors import ConfigError
from featpipe.store.files import format_bytes
from featpipe.words import counted

DEFAULT_DIR = "data/cache"

LIST_EPILOG = """\
examples:
  featpipe cache list                    # the stores in data/cache
  featpipe cache list runs/cache

STATE is complete, incomplete N/M (finished chunks; the same extract command resumes it),
in use (another process is writing it, or one part of a parted store, or is reading it
through featpipe, e.g. training a head from it), unreadable (damaged
or not HDF5; "part-NNNNN.h5 damaged" or "... of another store" names the one bad part of a
parted store: delete that file and run the same extraction again to recompute it alone, where
prune deletes the whole store), not a featpipe store (another program's HDF5 file, which
prune never deletes),
or leftover (a temporary or lock file of a run that was killed, or the parts folder of a
parted store that was deleted, e.g. once consolidated: "parts of no store"). AGE counts from
the last write (to any part, for a parted store).
"""

PRUNE_EPILOG = """\
examples:
  featpipe cache prune                   # leftover .tmp and lock files only
  featpipe cache prune --incomplete      # + unfinished and unreadable stores
  featpipe cache prune --older-than 30   # + stores not written for 30 days
  featpipe cache prune --incomplete --older-than 7 --yes   # both conditions, no question
  featpipe cache prune runs/cache --all  # every store

prune lists what it is about to delete, asks before deleting (unless --yes), and never
touches a store that another process is writing (it takes each store's lock first) or reading
through featpipe (readers hold a shared lock, <store>.read.lock, while they may read), nor an
HDF5 file that is not a featpipe store. Plain h5py readers take no lock. --incomplete deletes
a parted store with one bad part whole, as any unfinished store, and names that part: to keep
the other parts, delete that file alone and run the same extraction again instead.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "cache",
        help="list or prune the feature stores of a cache folder",
        description="List the feature stores of a cache folder, or delete old, unfinished and\n"
        "leftover ones.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    _action(
        sub,
        "list",
        run_list,
        LIST_EPILOG,
        help="each store's source, backbone, layers, rows, state, size and age",
        description="Each store's source, backbone, layers, rows, state, size and age, and\n"
        "leftover files.",
    )
    r = _action(
        sub,
        "prune",
        run_prune,
        PRUNE_EPILOG,
        help="delete leftover files and, when asked, unfinished or old stores",
        description="Delete leftover files (always) and the stores chosen by --incomplete,\n"
        "--older-than or --all. Stores in use by another process are never touched.",
    )
    r.add_argument(
        "--incomplete",
        action="store_true",
        help="delete stores with unfinished chunks, and unreadable ones",
    )
    r.add_argument(
        "--older-than",
        type=float,
        metavar="DAYS",
        help="delete stores not written for more than DAYS days (with --incomplete: only "
        "incomplete ones that old)",
    )
    r.add_argument("--all", action="store_true", help="delete every store not in use")
    r.add_argument("--yes", "-y", action="store_true", help="do not ask before deleting")


def _action(sub, name: str, func, epilog: str, **text) -> argparse.ArgumentParser:
    """One ``featpipe cache`` action, with its DIR argument."""
    p = sub.add_parser(
        name, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter, **text
    )
    p.add_argument(
        "dir",
        nargs="?",
        default=DEFAULT_DIR,
        metavar="DIR",
        help=f"cache folder (default: {DEFAULT_DIR})",
    )
    p.set_defaults(func=func)
    return p


def _age(days: float) -> str:
    if days >= 1:
        return f"{days:.1f} d"
    hours = days * 24
    return f"{hours:.1f} h" if hours >= 1 else f"{hours * 60:.0f} min"


HEADER = ("STATE", "SIZE", "AGE", "ROWS", "SOURCE", "BACKBONE", "LAYERS", "FILE")


def _table(entries, now: float) -> str:
    rows = [HEADER]
    for e in entries:
        rows.append(
            (
                e.state,
                format_bytes(e.size),
                _age(e.age_days(now)),
                "-" if e.rows is None else str(e.rows),
                e.source,
                e.backbone,
                ",".join(e.layers) or "-",
                e.path.name,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _scan(folder: str):
    from featpipe.store.cache import scan

    path = Path(folder)
    if path.exists() and not path.is_dir():  # e.g. a store's .h5 given for its folder
        raise ConfigError(
            f"{path} is a file, not a cache folder: give the folder extract wrote to "
            f"({path.resolve().parent} holds this file), or leave DIR out for {DEFAULT_DIR}."
        )
    if not path.is_dir():
        raise ConfigError(f"No cache folder at {path}: give the folder extract wrote to.")
    return scan(path)


def run_list(args: argparse.Namespace) -> int:
    entries = _scan(args.dir)
    if not entries:
        print(f"{args.dir}: no feature stores")
        return 0
    print(_table(entries, time.time()))
    stores = [e for e in entries if e.is_store]
    total = sum(e.size for e in entries)
    leftovers = len(entries) - len(stores)
    counts = f"{counted(len(stores), 'store')}, {counted(leftovers, 'leftover file')}"
    print(f"{counts}, {format_bytes(total)} on disk")
    return 0


def run_prune(args: argparse.Namespace) -> int:
    from featpipe.store.cache import remove, select
    from featpipe.store.parts import parts_dir

    if args.older_than is not None and not args.older_than >= 0:  # also NaN: every store
        raise ConfigError(f"--older-than must be a number of days >= 0; got {args.older_than}.")
    now = time.time()
    entries = _scan(args.dir)
    chosen = select(
        entries,
        incomplete=args.incomplete,
        older_than_days=args.older_than,
        everything=args.all,
        now=now,
    )
    skipped = [e for e in entries if e.in_use]
    if skipped:
        print(f"in use, kept: {', '.join(e.path.name for e in skipped)}")
    if not chosen:
        print("nothing to delete")
        return 0
    print(_table(chosen, now))
    for e in chosen:
        if e.bad_part is not None:  # an incomplete store, deleted whole like the others
            print(
                f"{e.path.name}: only {parts_dir(e.path).name}/{e.bad_part} is bad, and "
                "prune deletes the whole store; to keep its other parts, delete that file "
                "alone and run the same extraction again instead."
            )
    size = format_bytes(sum(e.size for e in chosen))
    if not args.yes and not _confirm(f"Delete these {len(chosen)} files ({size})? [y/N] "):
        print("nothing deleted (pass --yes to delete without asking)")
        return 1
    removed = [e for e in chosen if remove(e)]
    for e in chosen:
        if e not in removed:
            print(f"kept {e.path.name}: another process started using it")
    print(f"deleted {len(removed)} files ({format_bytes(sum(e.size for e in removed))})")
    return 0


def _confirm(question: str) -> bool:
    print(question, end="", flush=True)
    answer = sys.stdin.readline()  # "" at the end of input (not a terminal): no
    if not answer:
        print()
    return answer.strip().lower() in ("y", "yes")
