"""Progress of long work: a tqdm bar on a terminal, plain lines in a log.

Under Slurm or Kubernetes stdout and stderr are log files, where a carriage-return bar writes
a new copy of itself many times a second (tens of MB over a long job). There progress is one
plain line per interval instead: who (the rank, in a multi-process job), what, how far, how
fast and how long still. On a terminal only rank 0 of a torchrun job draws a bar, the other
ranks print lines: bars of several processes would overwrite each other on its one line.
``FEATPIPE_PROGRESS=bar|lines`` forces either;
``FEATPIPE_PROGRESS_INTERVAL`` sets the seconds between lines (default 30).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, TypeVar

from tqdm.auto import tqdm

from featpipe.distributed.ranks import current_ranks
from featpipe.errors import ConfigError

T = TypeVar("T")

DEFAULT_INTERVAL_S = 30.0
MODES = ("bar", "lines")


def progress_mode(stream: IO[str] | None = None) -> str:
    """``bar`` on a terminal (for rank 0 alone in a multi-process job), ``lines`` otherwise,
    unless ``FEATPIPE_PROGRESS`` says."""
    forced = os.environ.get("FEATPIPE_PROGRESS", "").strip().lower()
    if forced:
        if forced not in MODES:
            raise ConfigError(
                f"FEATPIPE_PROGRESS must be one of {', '.join(MODES)}; got {forced!r}. "
                "Unset it to choose by whether stderr is a terminal."
            )
        return forced
    if not current_ranks().is_main:  # the ranks' bars would take turns on one line, untagged
        return "lines"
    stream = sys.stderr if stream is None else stream
    return "bar" if getattr(stream, "isatty", lambda: False)() else "lines"


def line_interval() -> float:
    text = os.environ.get("FEATPIPE_PROGRESS_INTERVAL", str(DEFAULT_INTERVAL_S))
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"FEATPIPE_PROGRESS_INTERVAL must be seconds > 0; got {text!r}.")
    return value


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class LineProgress:
    """A tqdm-like counter (``update``, ``close``) that prints one plain line every
    ``interval`` seconds, and a last one when closed."""

    def __init__(
        self,
        total: int | None,
        *,
        initial: int = 0,
        desc: str = "",
        unit: str = "it",
        interval: float | None = None,
        stream: IO[str] | None = None,
        clock=time.monotonic,
    ):
        self.total = total
        self.n = initial
        self.desc = desc
        self.unit = unit
        self.interval = line_interval() if interval is None else float(interval)
        self.stream = stream
        self._clock = clock
        self._start = self._last = clock()
        self._initial = initial
        self._tag = current_ranks().tag
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._clock() - self._last >= self.interval:
            self._print()

    def line(self) -> str:
        """The progress line as it would be printed now."""
        elapsed = self._clock() - self._start
        rate = (self.n - self._initial) / elapsed if elapsed > 0 else 0.0
        who = f"[{self._tag}] " if self._tag else ""
        # A count past its total (a rank's share is a guess) has no known total: no '120 %'.
        total = self.total if self.total and self.n <= self.total else None
        where = f"{self.n:,}" + (f" of {total:,}" if total else "")
        text = f"featpipe {who}{self.desc}: {where} {self.unit}"
        if total:
            text += f" ({100 * self.n / total:.1f}%)"
        text += f", {rate:.1f} {self.unit}/s, elapsed {_duration(elapsed)}"
        if total and rate > 0 and self.n < total:
            text += f", ETA {_duration((total - self.n) / rate)}"
        return text

    def _print(self) -> None:
        stream = sys.stderr if self.stream is None else self.stream
        # One write per line: under torchrun's `python -u`, print writes the text and its
        # newline apart, and the ranks share one log, where two ranks' lines then join.
        stream.write(self.line() + "\n")
        stream.flush()
        self._last = self._clock()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._print()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_bar(
    total: int | None,
    *,
    initial: int = 0,
    desc: str = "",
    unit: str = "it",
    enabled: bool = True,
) -> tqdm | LineProgress:
    """A progress counter for long work: a bar on a terminal, plain lines in a log (see the
    module), nothing when ``enabled`` is False."""
    if not enabled or progress_mode() == "bar":
        return tqdm(
            total=total,
            initial=initial,
            desc=desc,
            unit=unit,
            disable=not enabled,
            dynamic_ncols=True,
        )
    return LineProgress(total, initial=initial, desc=desc, unit=unit)


def track(
    items: Iterable[T],
    *,
    desc: str = "",
    unit: str = "it",
    enabled: bool = True,
    total: int | None = None,
) -> Iterator[T]:
    """``items``, counted on a :func:`progress_bar` as they are consumed."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    bar = progress_bar(total, desc=desc, unit=unit, enabled=enabled)
    try:
        for item in items:
            yield item
            bar.update(1)
    finally:
        bar.close()
