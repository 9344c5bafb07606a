"""Run by tests/test_distributed_heads.py, alone or under torchrun: select and fit the
streamed logistic regression on a store; rank 0 writes what it found to OUT (.npz), and every
rank the number of train and val rows it read to OUT.rows-RANK."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from featpipe.distributed import current_ranks
from featpipe.heads import select_and_fit
from featpipe.heads.streamed_logreg import StreamingLogisticProbe
from featpipe.store import FeatureStore


def main(store_path: str, out: str) -> None:
    store = FeatureStore(store_path)
    rows_read = [0]
    read = FeatureStore.iter_chunks

    def counting(self, layer, split=None, *args, **kwargs):
        for X, y in read(self, layer, split, *args, **kwargs):
            rows_read[0] += len(y) if split != "test" else 0  # every rank predicts all of test
            yield X, y

    FeatureStore.iter_chunks = counting
    head = StreamingLogisticProbe(chunk_rows=40, tol=1e-6, device="cpu", n_threads=1)
    result = select_and_fit(head, store, "pooled", grid={"C": [1e-3, 1e-2, 1e-1, 1.0]})
    fitted = StreamingLogisticProbe(C=0.5, chunk_rows=40, tol=1e-6, device="cpu").fit_store(
        store, "pooled", ["train"]
    )
    Path(f"{out}.rows-{current_ranks().rank}").write_text(str(rows_read[0]))
    if current_ranks().is_main:
        np.savez(
            out,
            curve=[score for _, score in result.curve],
            best_C=result.params["C"],
            test_pred=result.test_pred,
            coef=fitted.classifier_.coef_,
            intercept=fitted.classifier_.intercept_,
            mean=fitted.preprocessor_[0].mean_,
            scale=fitted.preprocessor_[0].scale_,
        )


if __name__ == "__main__":
    main(*sys.argv[1:3])
