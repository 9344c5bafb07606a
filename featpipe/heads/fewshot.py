"""Few-shot probes: k training examples per class, repeated over seeded draws."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.base import BaseEstimator, clone

from featpipe.errors import ConfigError
from featpipe.heads.registry import check_seed, make_head, run_params
from featpipe.heads.selection import require_two_classes
from featpipe.heads.splits import FeatureSplits
from featpipe.validation import is_count
from featpipe.words import counted


@dataclass
class FewShotResult:
    k: int
    draws: int
    accuracies: list[float]

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracies))

    @property
    def std(self) -> float | None:
        """Sample standard deviation across draws (ddof=1); None for a single draw, whose
        spread is unknown rather than zero."""
        if len(self.accuracies) < 2:
            return None
        return float(np.std(self.accuracies, ddof=1))

    def summary(self) -> dict:
        return {
            "k": self.k,
            "draws": self.draws,
            "mean": self.mean,
            "std": self.std,
            "accuracies": self.accuracies,
        }


def splits_with_rows(data: FeatureSplits) -> list[str]:
    """The names of a source's splits that hold rows."""
    if data.is_store:
        return [name for name, n in data.source.split_counts().items() if n > 0]
    return [name for name in data.source if data.has(name)]


def require_test_split(data: FeatureSplits) -> None:
    """Raise a ConfigError naming the splits there are when ``data`` has no test rows, which
    few-shot scores every draw on."""
    if not data.has("test"):
        kind = "store" if data.is_store else "mapping of arrays"
        raise ConfigError(
            f"few-shot scores each draw on the 'test' split, but this {kind} has no 'test' "
            f"split with rows (it has: {', '.join(splits_with_rows(data)) or 'none'}). Give "
            "it a test split, or leave few-shot out."
        )


def require_k_per_class(
    data: FeatureSplits, k: int, y_train: np.ndarray | None = None
) -> np.ndarray:
    """The classes a draw takes ``k`` training rows of (a store's every class), or a
    ConfigError naming those with fewer; reads the train labels alone unless given."""
    if y_train is None:
        y_train = data.source.labels("train") if data.is_store else data.get("train")[1]
    y_train = np.asarray(y_train)
    labels = np.arange(len(data.classes)) if data.classes is not None else np.unique(y_train)
    counts = {c: int(np.sum(y_train == c)) for c in labels}  # labels may be strings
    short = {c: n for c, n in counts.items() if n < k}
    if short:
        detail = ", ".join(f"{data.class_name(c)!r} has {n}" for c, n in short.items())
        most = min(short.values())
        # few_shot's k is the command line's --few-shot: both words, as_flags maps no k=.
        lower = f"Use k={most} or less (CLI: --few-shot {most}), or drop" if most else "Drop"
        raise ConfigError(
            f"few-shot with k={k} needs {k} training examples per class, but {detail}. "
            f"{lower} those classes."
        )
    return labels


def _warn_if_votes_all_tie(head: BaseEstimator, k: int, n_classes: int) -> None:
    """Warn when a kNN head's votes must all tie: among ``k`` rows of each of ``n_classes``
    classes, m neighbours (``n_neighbors``, capped at the rows) always leave two classes with
    the most votes once m > n_classes * (k - 1) + 1, and a tied vote goes to the lowest class
    among them, not to the nearest. With k=1 that is any m > 1 (1-shot kNN at the default 5
    neighbours scored 20 % where 1 neighbour scored 87 %); with k=2 of 2 classes the 5
    neighbours, capped at 4, split 2-2 and every test row was given the first class (50 %)."""
    params = head.get_params()
    n_neighbors = params.get("n_neighbors")
    if not (params.get("weights") == "uniform" and is_count(n_neighbors)):  # 5.0 runs as 5
        return
    m = min(int(n_neighbors), k * n_classes)
    if m > n_classes * (k - 1) + 1:
        warnings.warn(
            f"few-shot with k={k} rows of each of {n_classes} classes and "
            f"{type(head).__name__}(n_neighbors={n_neighbors}): the {m} neighbours always "
            "leave two classes with the most votes, so every vote ties and goes to the lowest "
            "class among them; this accuracy is not the nearest neighbours'. Use "
            "n_neighbors=1 or weights='distance', or a larger k.",
            UserWarning,
            stacklevel=3,
        )


def _possible_draws(y_train: np.ndarray, labels: np.ndarray, k: int, draws: int) -> int:
    """``draws``, or 1 with a warning when every class has exactly ``k`` training rows: then
    every draw takes the same rows, and 5 copies of one fit read as a spread of 0."""
    if draws > 1 and all(np.sum(y_train == c) == k for c in labels):
        warnings.warn(
            f"few-shot with k={k}: each of the {len(labels)} classes has exactly "
            f"{counted(k, 'training row')}, so every draw takes the same rows; fitting one draw, "
            f"not {draws} (its spread is unknown, not 0). Use a smaller k for draws that differ.",
            UserWarning,
            stacklevel=3,
        )
        return 1
    return draws


def few_shot(
    estimator: BaseEstimator | str,
    source: object,
    layer: str | None = None,
    k: int = 5,
    *,
    draws: int = 5,
    seed: int = 0,
    head_seed: int | None = None,
    device: str | None = None,
) -> FewShotResult:
    """Test accuracy of ``estimator`` (fixed hyper-parameters) fitted on ``k`` examples per
    class drawn from train, over ``draws`` seeded draws (mean and sample std across draws).

    ``seed`` seeds the draws. ``head_seed`` and ``device`` are set on the head as
    :func:`select_and_fit`'s ``seed`` and ``device`` are (its seed parameter, for registered
    heads with randomness; ``device`` where it has one); None keeps the head's own. When
    every class has exactly ``k`` training rows, every draw would be the same: one is fitted."""
    if not (is_count(k) and is_count(draws)):  # int() cut 2.5 draws to 2; k=2.5 was a TypeError
        raise ConfigError(
            f"few-shot needs k and draws to be whole numbers >= 1; got k={k!r}, draws={draws!r}."
        )
    k, draws = int(k), int(draws)  # 3.0 is taken as 3
    check_seed(seed)  # of the draws
    head = make_head(estimator) if isinstance(estimator, str) else clone(estimator)
    head.set_params(**run_params(head, seed=head_seed, device=device))
    data = FeatureSplits(source, layer)
    require_test_split(data)  # before any draw is fitted
    X_tr, y_tr = data.fit_rows("train")
    require_two_classes(y_tr, data.class_name)  # kNN scored a head of one class
    labels = require_k_per_class(data, k, y_tr)
    _warn_if_votes_all_tie(head, k, len(labels))
    draws = _possible_draws(y_tr, labels, k, draws)
    X_te, y_te = data.get("test")
    rng = np.random.default_rng(seed)
    accuracies = []
    for _ in range(int(draws)):
        rows = np.concatenate(
            [rng.choice(np.flatnonzero(y_tr == c), size=k, replace=False) for c in labels]
        )
        est = clone(head).fit(X_tr[rows], y_tr[rows])
        accuracies.append(float(np.mean(est.predict(X_te) == y_te)))
    return FewShotResult(k=int(k), draws=int(draws), accuracies=accuracies)
