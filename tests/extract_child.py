"""Run one extraction in a subprocess (the kill-and-resume test kills it mid-run).

    python extract_child.py OUT N_IMAGES ROWS_PER_CHUNK SECONDS_PER_IMAGE

Prints the extraction stats as JSON when it finishes. Also defines ``NoiseSource``, the tiny
synthetic image source the extraction tests share.
"""

from __future__ import annotations

import json
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
    that row fail to decode. Neither changes the fingerprint (they model a slow disk and a
    transient read error)."""

    def __init__(
        self,
        n: int = 24,
        size: int = 20,
        seed: int = 0,
        delay: float = 0.0,
        fail_at: int | None = None,
    ):
        rng = np.random.default_rng(seed)
        self.pixels = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        self.classes = ["a", "b", "c"]
        self.ids = [f"img{i:04d}" for i in range(n)]
        self.labels = np.arange(n, dtype=np.int64) % 3
        self.splits = np.array([0, 0, 0, 1, 2, 0][:n] * (n // 6 + 1), dtype=np.uint8)[:n]
        self.delay = delay
        self.fail_at = fail_at

    def load(self, index: int) -> Image.Image:
        if self.delay:
            time.sleep(self.delay)
        if index == self.fail_at:
            raise ImageReadError(f"Cannot read image 'noise/{self.ids[index]}.jpg': broken")
        return Image.fromarray(self.pixels[index])

    def _fingerprint_parts(self, content: bool) -> Iterable[bytes]:
        return [p.tobytes() for p in self.pixels]

    def describe(self) -> dict:
        return {"kind": "NoiseSource", "name": "noise"}


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


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
