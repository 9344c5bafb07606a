"""Feature stores for the probes: one extraction per backbone, made when its first probe runs
(and not at all when every probe on it is finished).

Extraction writes no result row, so it is not a registered stage with jobs: a stage that reads
features asks for them with :func:`feature_store`, and the run makes each store once."""

from __future__ import annotations

from featpipe.evaluate import Extraction, measure
from featpipe.pipeline.jobs import RunContext


def feature_store(context: RunContext, backbone: str):
    """The feature store of ``backbone`` over the run's source (from extract's cache when it
    is there), and the :class:`Extraction` cost of the runs that built it."""
    return context.once(("store", backbone), lambda: _extract(context, backbone))


def _extract(context: RunContext, backbone: str):
    from featpipe.extract import extract

    features = context.config.features
    with measure(context.device) as usage:
        store = extract(
            context.source,
            backbone,
            list(features.layers),
            cache_dir=features.cache_dir,
            dtype=features.dtype,
            batch_size=features.batch_size,
            workers=features.workers,
            device=context.config.device,
            image_size=features.image_size,
            progress=context.progress,
            hash_contents=context.config.source.hash_contents,
            torch_compile=features.compile,
            on_error=features.on_error,
            decode=features.decode,
        )
    # The store's cost: every run that built it, summed (also when reused or resumed).
    stats = store.attrs.get("extraction") or {}
    extraction = Extraction(
        seconds=float(stats.get("seconds", 0.0)),
        images=int(stats.get("images") or 0),
        reused=bool((store.extraction or {}).get("reused")),
        peak_host_bytes=usage.peak_host_bytes,
    )
    verb = "reused" if extraction.reused else "extracted"
    context.log(f"features {verb}: {store.path} ({extraction.seconds:.1f} s)")
    return store, extraction


def planned_store(context: RunContext, backbone: str, built: dict) -> dict:
    """The store of ``backbone`` that the run's extraction would read or make now, found
    without extracting: its ``key`` and its ``compute`` (precision and decode path, which
    the device decides and the probes' config hashes leave out). ``built``: the Backbones
    the checks built, by spec."""

    def make() -> dict:
        import torch

        from featpipe.extract.extractor import store_request

        features = context.config.features
        request, _ = store_request(  # as _extract's extract() call asks
            context.provenance["source"]["fingerprint"],
            built[backbone].at_size(features.image_size),
            features.layers,
            features.dtype,
            torch.device(context.device),
            decode=features.decode,
        )
        return {"key": request.key, "compute": request.compute}

    return context.once(("planned store", backbone), make)
