"""A rank reading a parted store's top-level file while another rank completes it."""

from __future__ import annotations

import subprocess
import sys
import time

from test_cli_cache import _parted

from featpipe.extract import parted

# What a rank completing the store does (parted._try_finish): the store's lock held, the
# top-level file open for writing, for as long as finish_parted takes under load.
FINISHING = """
import sys, time, h5py
from featpipe.store.lock import StoreLock
with StoreLock(sys.argv[1]), h5py.File(sys.argv[1], "a"):
    print("ready", flush=True)
    time.sleep(1.5)
"""


def test_a_rank_waits_for_another_completing_the_store_instead_of_failing(tmp_path):
    """Under load, a rank listing the parts (or reading the store after its own parts) met
    another rank inside finish_parted: HDF5 locks the file open for writing, so the read
    failed at once with 'is in use by pid …: another extraction is writing it' and the rank
    exited 2 (seen once in test_trust_distributed_6 after completion got its fsyncs)."""
    store, _ = _parted(tmp_path)
    finishing = subprocess.Popen(
        [sys.executable, "-c", FINISHING, str(store)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert finishing.stdout.readline().strip() == "ready"
        started = time.monotonic()
        assert len(parted._all_parts(store)) == 2
        assert time.monotonic() - started > 0.5  # it waited for the lock
    finally:
        finishing.kill()
        finishing.wait()
