"""The optimisation recipe: parameter groups, optimiser, warm-up + cosine schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from featpipe.errors import ConfigError

OPTIMIZERS = ("sgd", "adamw")


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
