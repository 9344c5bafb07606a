"""Refuse features that are NaN or infinite before a head trains on them: a solver fed them
crashes deep inside (L-BFGS: "value cannot be converted to type float without overflow") or
returns NaN weights that predict one class for every row."""

from __future__ import annotations

import numpy as np

from featpipe.errors import NonFiniteFeaturesError


def check_finite(X: np.ndarray, what: str) -> None:
    """Raise NonFiniteFeaturesError naming the rows of ``X`` (the ``what`` features, e.g.
    "train") that hold NaN or infinite values."""
    X = np.asarray(X)
    if X.dtype.kind != "f" or np.isfinite(X).all():
        return
    rows = np.flatnonzero(~np.isfinite(X.reshape(len(X), -1)).all(axis=1))
    kind = "NaN" if np.isnan(X).any() else "infinite"
    raise NonFiniteFeaturesError(
        f"The {what} features hold {kind} values in {len(rows)} of {len(X)} rows (first: row "
        f"{rows[0]}); a head cannot be trained or tested on them. Fix where they come from "
        "(features stored as float16 overflow beyond 65504: extract with "
        'dtype="float32" (CLI: --dtype float32)), '
        "or leave those rows out (np.isfinite(X).all(axis=1))."
    )
