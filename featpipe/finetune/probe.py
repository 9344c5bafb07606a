"""The LP step of LP-FT: a logistic regression on pooled features, folded into a linear layer."""

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


def fit_probe(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    n_classes: int,
    C: float | str,
    device: str,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Fit standardise + logistic regression (``C="auto"`` picks C on val) and return the
    equivalent (C, D) weight and (C,) bias on raw features, plus a summary."""
    (X, y), (Xv, yv) = train, val
    mean, std = X.mean(axis=0), X.std(axis=0)
    std = np.where(std > 0, std, 1.0)  # constant features: as StandardScaler does
    Cs = PROBE_CS if C == "auto" else (float(C),)
    path = logreg_path((X - mean) / std, y, Cs, X_val=(Xv - mean) / std, y_val=yv, device=device)
    best = path.best_index
    coef, intercept = path.coefs[best], path.intercepts[best]
    if coef.shape[0] == 1:  # binary: sklearn's one-row layout
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-1, 1]) * intercept / 2
    W = np.zeros((n_classes, X.shape[1]))
    b = np.full(n_classes, -1e4)  # a class absent from train is never predicted, as in the probe
    W[path.classes], b[path.classes] = coef, intercept
    # Fold the standardisation: W (x - mean) / std + b == (W / std) x + (b - (W / std) mean).
    W = W / std
    b = b - W @ mean
    summary = {
        "C": float(path.Cs[best]),
        "val_accuracy": float(path.val_accuracy[best]),
        "seconds": path.seconds,
    }
    return torch.as_tensor(W, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32), summary


def load_into(linear: nn.Linear, weight: torch.Tensor, bias: torch.Tensor) -> None:
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)
