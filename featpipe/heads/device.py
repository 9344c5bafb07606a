"""Where torch work runs: ``auto`` picks CUDA when there is one."""

from __future__ import annotations

import torch

from featpipe.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu``, ``cuda`` and ``cuda:N`` as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" or device.startswith("cuda"):
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(
                f"device={device!r} was asked for but CUDA is not available; "
                "use device='cpu' or 'auto'."
            )
        return torch.device(device)
    raise ConfigError(f"Unknown device {device!r}; valid: {', '.join(DEVICES)} or 'cuda:N'.")
