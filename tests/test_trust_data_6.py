"""Image sources under unusual files and layouts: tables named no split, labels that are not
labels, class names spelt two ways, one image reached twice, malformed manifests."""

from __future__ import annotations

import numpy as np
from dataset_files import hf_dataset

from featpipe.data import ParquetSource, open_source


def test_a_parquet_file_that_names_no_split_loads_its_images(tmp_path):
    data, expected = hf_dataset(splits=("train",))
    data["train"].remove_columns("coarse_label").to_parquet(str(tmp_path / "plain.parquet"))
    source = open_source(str(tmp_path / "plain.parquet"), test_fraction=0.25)
    assert isinstance(source, ParquetSource) and source.ids[0] == "train/00000"
    np.testing.assert_array_equal(np.asarray(source.load(0)), expected["train"][0])
    assert source.read_bytes(0)
    assert source.fingerprint() != source.fingerprint(content=True)  # both computed
