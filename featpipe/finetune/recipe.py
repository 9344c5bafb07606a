"""The optimisation recipe: parameter groups, optimiser, warm-up + cosine schedule."""

from __future__ import annotations

import math
from numbers import Real

import torch
from torch import nn

from featpipe.errors import ConfigError

OPTIMIZERS = ("sgd", "adamw")
# LP-FT's fitted head turns a backbone step into a logit step far larger than a fresh head
# does, and unclipped its gradient ran away in the first epoch (demo, 1,079 digits: val
# 93.6 % -> 18.4 %). A cap on the global norm stops the runaway yet keeps the first steps
# (norms of about 10 there): test 96.7-97.2 % over 3 seeds, against 94.2-96.4 % unclipped
# and 94.2 % with a cap of 1 (benchmarks/README.md, "LP-FT's gradient cap").
LPFT_MAX_GRAD_NORM = 10.0


def max_grad_norm(setting: float | str | None, mode_kind: str) -> float | None:
    """The cap on the gradient's global norm a fine-tune trains with (None: no cap):
    ``setting`` (0 or None: none), or for ``"auto"`` LP-FT's cap and none in the other modes."""
    if isinstance(setting, str) and setting == "auto":
        return LPFT_MAX_GRAD_NORM if mode_kind == "lpft" else None
    if isinstance(setting, Real) and not isinstance(setting, bool):
        return float(setting) or None
    return setting  # None, or a value FineTuner refuses in its checks


def param_groups(
    model: nn.Module, head: str, head_lr: float, backbone_lr: float, weight_decay: float
) -> list[dict]:
    """Trainable parameters in up to four groups: head/backbone x decay/no-decay.

    Biases and normalisation weights (every tensor with ndim <= 1) get no weight decay;
    the backbone learns at its own (lower) rate so pretrained features move slowly.
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_head = name == head or name.startswith(head + ".")
        groups.setdefault((is_head, p.ndim > 1), []).append(p)
    out = []
    for (is_head, decay), params in sorted(groups.items(), reverse=True):
        out.append(
            {
                "params": params,
                "lr": head_lr if is_head else backbone_lr,
                "weight_decay": weight_decay if decay else 0.0,
                "name": f"{'head' if is_head else 'backbone'}{'' if decay else '_no_decay'}",
            }
        )
    return out


def build_optimizer(
    name: str, groups: list[dict], lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    if not groups:
        raise ConfigError("Nothing to train: the chosen mode froze every parameter.")
    if name == "sgd":
        return torch.optim.SGD(
            groups, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0
        )
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    raise ConfigError(f"Unknown optimizer {name!r}. Valid optimizers: {', '.join(OPTIMIZERS)}.")


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: linear warm-up to the base rates, then cosine annealing to zero."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup_steps) / span)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
