"""SIGINT and SIGTERM as one exception, so that every long job stops the same way.

A scheduler preempts with SIGTERM and a person with Ctrl-C (SIGINT). Python turns only the
second into an exception; :func:`handle_sigterm` makes the first one raise too, so that ``with``
blocks drain their writers and leave resumable state. Code that knows how far it got re-raises
:class:`Interrupted` with a message saying so (``"interrupted: 3 of 10 chunks done; run the same
command to resume"``); the CLI prints it and exits with ``128 + signal`` (130 or 143).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator


class Interrupted(KeyboardInterrupt):
    """A job stopped by SIGINT or SIGTERM. ``message`` says what was kept and how to go on."""

    def __init__(self, signum: int = signal.SIGINT, message: str = "interrupted"):
        super().__init__(message)
        self.signum = int(signum)
        self.message = message

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def with_message(self, message: str) -> Interrupted:
        """The same interruption, told with what the interrupted code knows."""
        return Interrupted(self.signum, message)

    @classmethod
    def from_exception(cls, exc: BaseException) -> Interrupted:
        """An Interrupted for any KeyboardInterrupt (plain Ctrl-C is SIGINT)."""
        return exc if isinstance(exc, Interrupted) else cls(signal.SIGINT)


_STOPS = (signal.SIGINT, signal.SIGTERM)


def _raise_interrupted(signum: int, _frame) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def handle_sigterm() -> Iterator[None]:
    """Inside the block, SIGTERM raises :class:`Interrupted` in the main thread like Ctrl-C
    does. Outside the main thread (where Python cannot install handlers) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then deliver them to the handlers that
    were in place: for writes that must not be cut in half, such as a checkpoint and the
    record that names it. A process forked inside the block does not hold them: its first
    stop signal puts the earlier handler back and goes to it. Outside the main thread it
    does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    holder = os.getpid()

    def hold(signum: int, frame) -> None:
        if os.getpid() == holder:
            held.append(signum)
            return
        signal.signal(signum, previous[signum])  # a forked worker: as before the block
        signal.raise_signal(signum)

    previous = {s: signal.signal(s, hold) for s in _STOPS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    for signum in dict.fromkeys(held):
        signal.raise_signal(signum)


@contextlib.contextmanager
def forking() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while worker processes are forked (a DataLoader's ``iter``).

    A signal landing inside ``os.fork`` runs its handler in fork's after-fork hooks, where
    Python prints the exception and drops it, so the main process would run on; and a new
    worker would die of it, with a traceback, before it can ignore it. So the signals are
    blocked in this thread, which the workers inherit (each unblocks them in
    :func:`worker_ignores`), and held (:func:`deferred`): the kernel may hand a signal to
    another thread (torch's intra-op threads, a writer thread), and Python then runs its
    handler in this thread even while it is blocked here. Either way the signal reaches the
    main process once the workers exist. Outside the main thread it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    with deferred():
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOPS)
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def worker_ignores(*signums: int) -> None:
    """In a worker forked under :func:`forking`: ignore ``signums`` (the main process stops
    the run and shuts its workers down), then unblock the stop signals."""
    for signum in signums:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOPS)


def dead_worker(exc: BaseException, loader_workers: bool) -> str | None:
    """What ``exc`` says, where it is a DataLoader worker's death: torch's RuntimeError, or,
    for a worker killed while the main process fetched a batch's shared memory from it, the
    reset or closed connection of that handover (only where loader workers run); else None."""
    if isinstance(exc, RuntimeError):
        text = str(exc).strip().rstrip(".")
        return text if text.startswith("DataLoader worker") else None  # torch's words
    if loader_workers and isinstance(exc, (ConnectionResetError, EOFError)):
        return f"A batch's handover from a loader worker failed ({str(exc) or type(exc).__name__})"
    return None


def say(line: str) -> None:
    """``line`` on stderr in one write: under torchrun's ``python -u`` print writes the text
    and its newline apart, and in the ranks' shared log two ranks' lines could join."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def quiet_while_importing() -> Callable[[], None]:
    """In the ``featpipe`` command, until the returned function is called, Ctrl-C ends the
    program at once with one line and 130. ``featpipe/__init__`` calls this before its slow
    imports (torch takes seconds) and the function after them: the CLI cannot catch what stops
    it before :func:`featpipe.cli.main` starts, and a KeyboardInterrupt raised inside torch's
    or numpy's import gives a long traceback, a RecursionError or a C++ abort. Nothing has been
    done yet, so there is nothing to clean up. A program that imports featpipe keeps its
    Ctrl-C, as does a command whose SIGINT is already handled or ignored."""
    if (
        not _the_command()
        or threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        return lambda: None

    def stop(signum: int, _frame) -> None:
        say("featpipe: interrupted while starting; nothing was done")
        os._exit(128 + signum)

    signal.signal(signal.SIGINT, stop)

    def done() -> None:
        if signal.getsignal(signal.SIGINT) is stop:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    return done


def stop_at_once() -> None:
    """In the ``featpipe`` command, once :func:`featpipe.cli.main` has decided to end: a
    further Ctrl-C or SIGTERM ends the process at once with ``128 + signal``. Raised during
    the interpreter's exit, it would break into its atexit callbacks ("Exception ignored in
    atexit callback ... KeyboardInterrupt") or abort it. A program that calls main() keeps
    its handlers."""
    if not _the_command() or threading.current_thread() is not threading.main_thread():
        return

    def stop(signum: int, _frame) -> None:
        with contextlib.suppress(Exception):  # what main printed, if still buffered
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(128 + signum)

    for signum in _STOPS:
        signal.signal(signum, stop)


def _the_command() -> bool:
    """Whether this process is the ``featpipe`` command: its console script, or
    ``python -m featpipe`` (whose ``sys.argv[0]`` reads ``-m`` while the package imports)."""
    script = os.path.basename(sys.argv[0]) if sys.argv else ""
    if os.path.splitext(script)[0] == "featpipe":
        return True
    argv = sys.orig_argv
    return any(a == "-m" and b == "featpipe" for a, b in itertools.pairwise(argv))
