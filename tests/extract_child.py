"""Run one extraction in a subprocess (the kill-and-resume test kills it mid-run).

    python extract_child.py OUT N_IMAGES ROWS_PER_CHUNK SECONDS_PER_IMAGE
    python extract_child.py cli ARG...      # `featpipe ARG...`, with a built-in `noise` source

The first form prints the extraction stats as JSON when it finishes. The second runs the real
command line (its messages, exit codes and signal handling), with the `toy` backbone and a
built-in dataset `noise`: ``NoiseSource(**json.loads($NOISE))``. Also defines
``NoiseSource``, the tiny synthetic image source the extraction tests share.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import toy_backbone  # noqa: F401  (registers 'toy')

from featpipe.data.source import ImageSource
from featpipe.errors import ImageReadError


class NoiseSource(ImageSource):
    """``n`` seeded random RGB images of ``size`` pixels, 3 classes, splits train/val/test.

    ``delay`` seconds of sleep per image make a run slow enough to kill; ``fail_at`` makes
    that row fail to decode; loading row ``fill_disk_at`` fills the disk of the folder
    ``fill_disk`` with a file ``filler``; loading row ``hold_at`` waits while the file
    ``hold`` exists. None of them changes the fingerprint (they model a slow disk, a
    transient read error, another program taking the disk and a run paused at a known
    point)."""

    def __init__(
        self,
        n: int = 24,
        size: int = 20,
        seed: int = 0,
        delay: float = 0.0,
        fail_at: int | None = None,
        fill_disk_at: int | None = None,
        fill_disk: str | None = None,
        hold_at: int | None = None,
        hold: str | None = None,
    ):
        rng = np.random.default_rng(seed)
        self.pixels = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        self.classes = ["a", "b", "c"]
        self.ids = [f"img{i:04d}" for i in range(n)]
        self.labels = np.arange(n, dtype=np.int64) % 3
        self.splits = np.array([0, 0, 0, 1, 2, 0][:n] * (n // 6 + 1), dtype=np.uint8)[:n]
        self.delay = delay
        self.fail_at = fail_at
        self.fill_disk_at = fill_disk_at
        self.fill_disk = fill_disk
        self.hold_at, self.hold = hold_at, hold

    def load(self, index: int) -> Image.Image:
        if self.delay:
            time.sleep(self.delay)
        while index == self.hold_at and Path(self.hold).exists():
            time.sleep(0.02)
        if index == self.fill_disk_at:
            fill_disk(Path(self.fill_disk))
        if index == self.fail_at:
            raise ImageReadError(f"Cannot read image 'noise/{self.ids[index]}.jpg': broken")
        return Image.fromarray(self.pixels[index])

    def _fingerprint_parts(self, content: bool) -> Iterable[bytes]:
        return [p.tobytes() for p in self.pixels]

    def describe(self) -> dict:
        return {"kind": "NoiseSource", "name": "noise"}


def read_features(path: str | Path) -> dict[str, np.ndarray]:
    """Every layer's stored features, read with plain h5py."""
    import h5py

    with h5py.File(path, "r") as f:
        return {name: ds[:] for name, ds in f["features"].items()}


def chunks_done(path: str | Path) -> int:
    """Finished chunks of a store another process is writing (0 while it cannot be read)."""
    import h5py

    try:  # the writer holds the file open: read without HDF5 file locking
        with h5py.File(path, "r", locking=False) as f:
            return int(f["progress/chunk_done"][:].sum())
    except (OSError, KeyError):
        return 0


def wait_for_chunks(path: str | Path, n: int, process, seconds: float = 60) -> int:
    """Wait until ``process`` has finished ``n`` chunks of the store at ``path``."""
    deadline = time.monotonic() + seconds
    done = 0
    while time.monotonic() < deadline and process.poll() is None and done < n:
        time.sleep(0.05)
        done = chunks_done(path)
    return done


def fill_disk(folder: Path) -> None:
    """Take every free byte of the file system of ``folder`` with ``folder/filler``."""
    with open(folder / "filler", "wb", buffering=0) as f:
        for size in (1 << 16, 1 << 12, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                continue


LAYERS = ["stem:max", "stage1:grid:2", "stage2:avgmax", "pooled", "logits"]


def main(out: str, n: int, rows: int, delay: float) -> None:
    from featpipe.extract import extract

    store = extract(
        NoiseSource(n, delay=delay),
        "toy",
        LAYERS,
        out=out,
        batch_size=rows,
        workers=0,
        device="cpu",
        dtype="float32",
        progress=False,
    )
    print(json.dumps(store.extraction), flush=True)


def cli(argv: list[str]) -> int:
    from featpipe.cli import main as featpipe_main
    from featpipe.data.builtin import register_builtin_source

    @register_builtin_source("noise")
    def noise(*, seed: int = 0) -> NoiseSource:
        return NoiseSource(**{"seed": seed, **json.loads(os.environ.get("NOISE", "{}"))})

    return featpipe_main(argv)


if __name__ == "__main__":
    if sys.argv[1] == "cli":
        sys.exit(cli(sys.argv[2:]))
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
