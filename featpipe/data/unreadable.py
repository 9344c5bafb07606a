"""What to do with images that cannot be read: fail on the first, or skip them and say which.

``on_error="fail"`` (the default) stops at the first unreadable image with one line naming the
file, the reason and how to go on; ``on_error="skip"`` records it and leaves it out. Extraction
records skipped rows in the feature store (``FeatureStore.skipped()``); :func:`unreadable_images`
finds the same rows for work that has no store (fine-tuning alone).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from torch.utils.data import DataLoader, Dataset

from featpipe.data.source import ImageSource
from featpipe.distributed.progress import track
from featpipe.errors import ConfigError, ImageReadError

ON_ERROR = ("fail", "skip")
_CHECK_ROWS = 64  # images per task of the decode check


def check_on_error(on_error: str) -> str:
    if on_error not in ON_ERROR:
        raise ConfigError(
            f"on_error must be one of {', '.join(ON_ERROR)}; got {on_error!r}. 'fail' stops at "
            "the first unreadable image, 'skip' records it and leaves it out."
        )
    return on_error


def first_failure(failed: Mapping[int, ImageReadError]) -> ImageReadError:
    """The error to stop with (on_error="fail"): the first failed image's own line, plus how
    to go on without it."""
    err = failed[min(failed)]
    text = str(err).rstrip()
    text += "" if text.endswith(".") else "."
    stop = ImageReadError(
        # In the API's words; the command line names its flag (featpipe.cli.as_flags).
        f"{text} To leave out unreadable images instead (recorded as skipped), pass "
        'on_error="skip".',
        path=err.path,
        reason=err.reason,
    )
    stop.__cause__ = err  # shown with FEATPIPE_DEBUG=1
    return stop


class _RowBlocks(Dataset):
    """Item ``i``: ``{row: ImageReadError}`` for the images of the ``i``-th block of rows
    that cannot be loaded."""

    def __init__(self, source: ImageSource):
        self.source = source

    def __len__(self) -> int:
        return -(-len(self.source) // _CHECK_ROWS)

    def __getitem__(self, i: int) -> dict[int, ImageReadError]:
        failed = {}
        for row in range(i * _CHECK_ROWS, min(len(self.source), (i + 1) * _CHECK_ROWS)):
            try:
                self.source.load(row)
            except ImageReadError as err:
                failed[row] = err
        return failed


def unreadable_images(
    source: ImageSource, on_error: str = "fail", *, workers: int = 0, progress: bool = False
) -> dict[str, str]:
    """``{sample id: reason}`` of the images of ``source`` that cannot be loaded, in row order,
    found by decoding every image once (``workers`` loader processes). With
    ``on_error="fail"`` the first one raises instead. They are the rows extraction skips: both
    decode by :func:`featpipe.data.load_rgb`'s rules."""
    check_on_error(on_error)
    blocks = DataLoader(_RowBlocks(source), batch_size=None, num_workers=workers)
    failed: dict[int, ImageReadError] = {}
    for found in track(blocks, desc="checking images", unit="block", enabled=progress):
        failed.update(found)
        if failed and on_error == "fail":
            raise first_failure(failed)
    return {source.ids[row]: err.reason for row, err in sorted(failed.items())}


def without(source: ImageSource, ids: Collection[str]) -> ImageSource:
    """``source`` without the samples ``ids`` (``source`` itself when there are none)."""
    if not ids:
        return source
    return source.subset([row for row, sid in enumerate(source.ids) if sid not in ids])
