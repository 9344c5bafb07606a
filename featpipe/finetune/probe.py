"""The LP step of LP-FT: a logistic regression on standardised pooled features, loaded into a
fixed standardisation and a linear layer."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from featpipe.backbones import POOLED, Backbone
from featpipe.heads.torch_logreg import logreg_path

PROBE_CS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)  # increasing: each warm-starts the next


@torch.inference_mode()
def pooled_features(
    backbone: Backbone, data: DataLoader, device: torch.device, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The backbone's ``pooled`` features (eval mode) and labels of every batch in ``data``."""
    feature_model = backbone.features([POOLED])
    backbone.model.eval()
    xs, ys = [], []
    try:
        for images, labels in tqdm(
            data, desc="probe features", unit="batch", leave=False, disable=not progress
        ):
            xs.append(feature_model(images.to(device))[POOLED].cpu().numpy())
            ys.append(labels.numpy())
    finally:
        feature_model.remove()
    return np.concatenate(xs), np.concatenate(ys)


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
