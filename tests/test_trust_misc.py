"""Trust review of the data checks, the CLI's check command and provenance: each test failed
before its fix."""

from __future__ import annotations

from featpipe.provenance import versions


def test_provenance_records_the_optional_libraries_that_compute_results():
    """An hf: or openclip: backbone's features and the knn_faiss head's predictions depend on
    transformers, open_clip and faiss, whose versions were not recorded."""
    from importlib.metadata import PackageNotFoundError, version

    recorded = versions()
    for dist in ("transformers", "open_clip_torch", "faiss-cpu"):
        try:
            installed = version(dist)
        except PackageNotFoundError:
            continue
        assert installed in recorded.values(), dist
