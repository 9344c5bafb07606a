"""--decode fast on JPEGs smaller than the model's input, and a data loader that ends early."""

from __future__ import annotations

import numpy as np
import pytest
from test_decode import folder

from featpipe.data import ImageFolderSource
from featpipe.data.images import draft_scale, load_rgb
from featpipe.extract import extract


def test_a_jpeg_smaller_than_the_resize_decodes_at_full_size(tmp_path):
    # 32 px CIFAR JPEGs at a 96 px input: draft_scale raised StopIteration.
    assert draft_scale((32, 32), 96) == 1
    path = folder(tmp_path / "img", size=(24, 20), n=1) / "c0" / "0.jpg"
    assert np.array_equal(np.asarray(load_rgb(path, min_size=64)), np.asarray(load_rgb(path)))


@pytest.mark.parametrize("workers", [0, 1])
def test_fast_decode_of_small_jpegs_fills_the_whole_store(tmp_path, workers):
    """With no loader worker, the StopIteration ended the DataLoader silently: 'extracted 0
    images', 'features written', exit status 0 and an incomplete store."""
    root = folder(tmp_path / "img", size=(24, 20), n=6)
    options = dict(cache_dir=tmp_path / "cache", batch_size=4, workers=workers, progress=False)
    exact = extract(ImageFolderSource(root), "toy", ["pooled"], image_size=32, **options)
    fast = extract(
        ImageFolderSource(root), "toy", ["pooled"], image_size=32, decode="fast", **options
    )
    assert fast.complete and fast.extraction["images"] == 6
    np.testing.assert_array_equal(fast.arrays("pooled")[0], exact.arrays("pooled")[0])


def test_a_loader_that_ends_early_is_an_error_not_a_finished_run(tmp_path, monkeypatch):
    """A StopIteration raised while reading an image ends a PyTorch DataLoader without an
    error; the rows after it were never computed, and the run must say so."""
    from featpipe.extract import datapath

    root = folder(tmp_path / "img", size=(24, 20), n=6)
    load = datapath.CPUDataPath.load

    def load_then_stop(self, source, row):
        if row == 4:
            raise StopIteration
        return load(self, source, row)

    monkeypatch.setattr(datapath.CPUDataPath, "load", load_then_stop)
    options = dict(out=tmp_path / "s.h5", batch_size=2, workers=0, progress=False)
    with pytest.raises(RuntimeError, match="row 4"):
        extract(ImageFolderSource(root), "toy", ["pooled"], image_size=32, **options)


def test_a_loader_ending_early_for_any_reason_leaves_an_error(tmp_path, monkeypatch):
    from featpipe.extract import loop

    root = folder(tmp_path / "img", size=(24, 20), n=6)
    read = loop.PieceDataset.__getitem__

    def stop_at_third(self, i):
        if i == 2:
            raise StopIteration  # as from any code the loader runs
        return read(self, i)

    monkeypatch.setattr(loop.PieceDataset, "__getitem__", stop_at_third)
    out = tmp_path / "s.h5"
    options = dict(out=out, batch_size=2, chunk_rows=2, workers=0, progress=False)
    with pytest.raises(RuntimeError, match="ended after 2 of 3 batches"):
        extract(ImageFolderSource(root), "toy", ["pooled"], image_size=32, **options)
    monkeypatch.undo()  # the chunks written are kept, and the same call finishes the store
    store = extract(ImageFolderSource(root), "toy", ["pooled"], image_size=32, **options)
    assert store.complete and store.extraction["images"] == 2
