"""A decoding worker that dies while it hands a batch over: the same one line as a worker that
dies between batches (tests/test_trust_extract_10.py)."""

from __future__ import annotations

import pytest
import toy_backbone  # noqa: F401  (registers "toy")
from conftest import make_image_folder

from featpipe.data import ImageFolderSource
from featpipe.errors import IncompleteStoreError
from featpipe.extract import extract, loop


@pytest.mark.parametrize(
    "reset", [ConnectionResetError(104, "Connection reset by peer"), EOFError()]
)
def test_a_worker_dying_mid_handover_is_the_dead_worker_line(tmp_path, monkeypatch, reset):
    """Killed while the main process fetched a batch's shared memory from it (torch's
    resource_sharer), a worker left multiprocessing's ConnectionResetError traceback instead of
    'A decoding worker died ... Run the same command to resume' (seen once in CI under load)."""
    source = ImageFolderSource(make_image_folder(tmp_path / "img"))
    start = loop._start

    def handover_reset(*args, **kwargs):
        computed, stop = start(*args, **kwargs)

        def batches():
            yield next(computed)
            raise reset

        return batches(), stop

    monkeypatch.setattr(loop, "lane_count", lambda *_: 0)  # loader workers, as on CUDA
    monkeypatch.setattr(loop, "_start", handover_reset)
    options = dict(image_size=32, batch_size=3, chunk_rows=3, progress=False, workers=2)
    with pytest.raises(IncompleteStoreError, match=r"worker died.*Run the same command to resume"):
        extract(source, "toy", ["pooled"], out=tmp_path / "s.h5", **options)


def test_a_reset_without_loader_workers_is_not_called_a_dead_worker(tmp_path, monkeypatch):
    source = ImageFolderSource(make_image_folder(tmp_path / "img"))
    start = loop._start

    def reset(*args, **kwargs):
        _, stop = start(*args, **kwargs)

        def batches():
            raise ConnectionResetError(104, "Connection reset by peer")
            yield

        return batches(), stop

    monkeypatch.setattr(loop, "_start", reset)
    options = dict(image_size=32, batch_size=3, chunk_rows=3, progress=False, workers=0)
    with pytest.raises(ConnectionResetError):
        extract(source, "toy", ["pooled"], out=tmp_path / "s.h5", **options)
