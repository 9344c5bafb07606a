"""Stop signals around forks (featpipe/interrupt.py)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from featpipe.interrupt import deferred, forking, handle_sigterm


def test_a_stop_signal_taken_by_another_thread_waits_for_the_forks():
    """Ctrl-C reaches the whole process, and the kernel may hand it to any thread that does
    not block it (torch's intra-op threads, a pin-memory or writer thread). Python then runs
    the handler in the main thread at its next check, even with the signal blocked there:
    it must still wait until the block ends (inside fork's after-fork hooks, the exception
    would be printed and dropped, and the run would go on)."""
    go = threading.Event()

    def send() -> None:  # a thread started before the block: SIGINT is not blocked in it
        go.wait(10)
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)

    other = threading.Thread(target=send)
    other.start()
    done = []
    with pytest.raises(KeyboardInterrupt), forking():
        go.set()
        other.join(10)
        time.sleep(0.05)  # the main thread checks for pending signals
        done.append("block")
    assert done == ["block"]


@pytest.mark.parametrize("block", [deferred, forking])
def test_a_process_forked_in_the_block_keeps_the_stop_signals_it_had(block):
    """A worker forked while the signals are held must not hold them itself: SIGTERM is how
    a worker that does not stop in time is ended."""
    with handle_sigterm(), block():
        pid = os.fork()
        if pid == 0:  # the child: SIGTERM as the parent had it before the block
            try:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM])
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1)
            except BaseException as exc:
                os._exit(7 if type(exc).__name__ == "Interrupted" else 3)
            os._exit(0)  # the signal was swallowed
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 7
