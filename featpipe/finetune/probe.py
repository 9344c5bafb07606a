"""The LP step of LP-FT: a logistic regression on standardised pooled features (computed, or
read from a store that already holds them), loaded into a fixed standardisation and a linear
layer."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from featpipe.backbones import POOLED, Backbone
from featpipe.data.source import ImageSource
from featpipe.distributed import progress_bar
from featpipe.errors import StoreMismatchError
from featpipe.evaluate.leakage import extracted_from
from featpipe.extract.inference import Inference
from featpipe.extract.loop import compute_identity, compute_words
from featpipe.heads.torch_logreg import logreg_path
from featpipe.provenance import plain
from featpipe.store import FeatureStore
from featpipe.store.schema import skipped_rows

PROBE_CS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)  # increasing: each warm-starts the next


def pooled_features(
    backbone: Backbone,
    data: DataLoader,
    device: torch.device,
    progress: bool = False,
    *,
    memory_format: torch.memory_format = torch.channels_last,
) -> tuple[np.ndarray, np.ndarray]:
    """The backbone's ``pooled`` features and labels of every batch in ``data``, through
    extraction's forward pass (eval mode, the same autocast), as a store would hold them."""
    xs, ys = [], []
    with (
        Inference.of_layers(backbone, [POOLED], device, memory_format=memory_format) as run,
        progress_bar(len(data), desc="probe features", unit="batch", enabled=progress) as bar,
    ):
        for images, labels in data:
            xs.append(run.arrays(images)[POOLED])
            ys.append(labels.numpy())
            bar.update(1)
        if not xs:  # a DDP rank whose share of a small split is empty: (0, width) all the same
            crop = backbone.preprocessing.crop
            xs.append(run.arrays(torch.zeros(1, 3, crop, crop))[POOLED][:0])
            ys.append(np.zeros(0, np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def own_compute(
    device: torch.device, decode: str, dtype: torch.dtype = torch.float32
) -> dict[str, str]:
    """How a fine-tune on ``device`` of a model whose weights are ``dtype`` computes features,
    as a store records it (``compute``): its loaders decode with Pillow (``decode`` exact or
    fast), at the device's precision for that dtype (``fp64`` for a float64 model)."""
    return compute_identity(device, "cpu", decode, dtype)


def computed_alike(store: FeatureStore, compute: dict[str, str]) -> bool:
    """Whether ``store`` computed its features as ``compute`` says (a store that does not
    record it, made before it was recorded, is taken as alike)."""
    stored = plain(store.attrs.get("compute"))
    return not isinstance(stored, dict) or stored == compute


def stored_features(
    store: FeatureStore,
    backbone: Backbone,
    source: ImageSource,
    *rows: np.ndarray,
    compute: dict[str, str] | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(pooled features, labels)`` of each of ``rows`` (row indices of ``source``), the
    features read from ``store`` instead of computed (in the store's dtype, float16 by
    default, then as float32); raises StoreMismatchError unless the store holds ``pooled``
    of the same backbone (spec, weights, preprocessing) over the same images (ids, labels,
    splits and files: the source's fingerprint), computed as ``compute`` says (``own_compute``
    of the fine-tune) when given."""
    check_store(store, backbone, source, compute)
    X, _ = store.arrays(POOLED)  # every row: check_store refuses stores with skipped rows
    labels = np.asarray(source.labels)
    return [(X[r], labels[r]) for r in rows]


def check_store(
    store: FeatureStore,
    backbone: Backbone,
    source: ImageSource,
    compute: dict[str, str] | None = None,
) -> None:
    """Raise StoreMismatchError, saying what differs, unless ``store`` has the ``pooled``
    features that ``backbone`` computes over ``source`` (as ``compute`` says, when given)."""
    problems = []
    if POOLED not in store.layers:
        problems.append(f"it has no {POOLED!r} layer (it has {store.layers})")
    stored, asked = plain(store.attrs.get("backbone")), plain(backbone.identity())
    for field in ("spec", "weights_sha256", "preprocessing"):
        if (stored or {}).get(field) != asked[field]:
            have = (stored or {}).get(field)
            problems.append(f"its backbone {field} is {have!r}, the fine-tuning's {asked[field]!r}")
    if not extracted_from(store, source):
        problems.append("it was extracted from other images (ids, labels, splits or files)")
    if skipped := store.skipped():
        left_out = skipped_rows(skipped)
        problems.append(f"it leaves out {left_out}")
    if compute is not None and not computed_alike(store, compute):
        # Another decode or precision moves features by percent: the probe would start the
        # fine-tune from a head fitted to features its model does not compute.
        stored = plain(store.attrs["compute"])
        problems.append(
            f"its features were computed with {compute_words(stored)}, the fine-tuning computes "
            f"them with {compute_words(compute)}"
        )
    if problems:
        raise StoreMismatchError(
            f"The probe features cannot come from {store.path}: " + "; ".join(problems) + ". "
            "Pass a store extracted from the same source with the same backbone, image size, "
            'decode and device, with its "pooled" layer and data_path="cpu" (CLI: featpipe '
            "extract --data-path cpu), or no probe_features to compute them."
        )


class Standardize(nn.Module):
    """A fixed ``(x - mean) / std`` in front of an LP-FT head. The probe's weights stay in the
    standardised space they were fitted in: folded into raw-feature weights (W / std) they
    would make SGD steps on the head up to 1/std² too large, and training diverges."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def fit_probe(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    n_classes: int,
    C: float | str,
    device: str,
) -> tuple[dict[str, torch.Tensor], dict]:
    """Fit standardise + logistic regression (``C="auto"`` picks C on val); returns the
    head's tensors (mean, std, (C, D) weight, (C,) bias) and a summary."""
    (X, y), (Xv, yv) = train, val
    mean, std = X.mean(axis=0), X.std(axis=0)
    # Floor tiny scales: a unit nearly constant in eval mode varies once batch norm trains,
    # and dividing by its tiny std would blow up the logits and the first fine-tuning steps.
    floor = 0.1 * float(np.median(std[std > 0])) if np.any(std > 0) else 1.0
    std = np.maximum(std, floor)
    Cs = PROBE_CS if C == "auto" else (float(C),)
    path = logreg_path((X - mean) / std, y, Cs, X_val=(Xv - mean) / std, y_val=yv, device=device)
    best = path.best_index
    coef, intercept = path.coefs[best], path.intercepts[best]
    if coef.shape[0] == 1:  # binary: sklearn's one-row layout
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-1, 1]) * intercept / 2
    W = np.zeros((n_classes, X.shape[1]))
    b = np.full(n_classes, -1e4)  # a class absent from train is never predicted, as in the probe
    W[path.classes], b[path.classes] = coef, intercept
    summary = {
        "C": float(path.Cs[best]),
        "val_accuracy": float(path.val_accuracy[best]),
        "seconds": path.seconds,
    }
    tensors = {"mean": mean, "std": std, "weight": W, "bias": b}
    return {k: torch.as_tensor(v, dtype=torch.float32) for k, v in tensors.items()}, summary


def load_into(head: nn.Sequential, tensors: dict[str, torch.Tensor]) -> None:
    """Copy a fitted probe into an LP-FT head (Standardize first, Linear last)."""
    standardize, linear = head[0], head[-1]
    with torch.no_grad():
        standardize.mean.copy_(tensors["mean"])
        standardize.std.copy_(tensors["std"])
        linear.weight.copy_(tensors["weight"])
        linear.bias.copy_(tensors["bias"])
