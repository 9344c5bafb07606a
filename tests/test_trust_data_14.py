"""Trust sweep of the data sources (session 14, round 2): labels that pandas or numpy mark as
missing in their own ways."""

from __future__ import annotations

import numpy as np
import pytest

from featpipe.data import ArraySource
from featpipe.errors import ConfigError, SourceError

pd = pytest.importorskip("pandas")


@pytest.mark.parametrize(
    ("labels", "shown"),
    [
        (lambda: pd.array(["a", "b", None, "b"], dtype="string"), "<NA>"),
        (lambda: pd.Series(["a", "b", None, "b"]).convert_dtypes().to_numpy(), "<NA>"),
        (lambda: np.array(["a", "b", np.float32("nan"), "b"], dtype=object), "nan"),
    ],
    ids=["string-dtype", "convert_dtypes", "float32-nan"],
)
def test_a_label_missing_as_pandas_na_or_a_float32_nan_is_refused_not_a_class(labels, shown):
    # pandas' NA (string and nullable dtypes, convert_dtypes()) became a class '<NA>', and a
    # float32 NaN a class 'nan': only None, a float NaN and blank names were seen as missing
    images = np.zeros((4, 4, 4, 3), dtype=np.uint8)
    with pytest.raises(SourceError, match=rf"1 image has no label .* row 2, {shown}\)"):
        ArraySource(images, np.asarray(labels(), dtype=object))


def test_fingerprint_takes_content_parts_only_with_content():
    # the parts passed in are the images' contents (leakage.source_hashes reads them once):
    # hashed under content=False they gave a fingerprint of neither kind, and no error
    source = ArraySource(np.zeros((3, 4, 4, 3), dtype=np.uint8), [0, 1, 0])
    parts = list(source._fingerprint_parts(content=True))
    assert source.fingerprint(content=True, parts=parts) == source.fingerprint(content=True)
    with pytest.raises(ConfigError, match=r"pass content=True with them, or leave parts out"):
        source.fingerprint(parts=parts)
