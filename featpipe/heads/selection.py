"""Hyper-parameter selection without test leakage (Kornblith et al. 2019).

Choose on the validation split (or stratified k-fold CV on train when there is no validation
split), refit on train+val with the chosen values, and only then read and predict the test split.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.model_selection import ParameterGrid, StratifiedKFold

from featpipe.distributed.progress import track
from featpipe.errors import ConfigError, UnknownNameError, did_you_mean
from featpipe.evaluate.metrics import row_nll
from featpipe.heads.registry import default_grid, head_name, make_head, run_params
from featpipe.heads.splits import FeatureSplits
from featpipe.provenance import plain
from featpipe.validation import is_count
from featpipe.words import counted

REFITS = ("train+val", "train")  # what the chosen head is refitted on, given a val split


@dataclass
class SelectionResult:
    """What a selection run chose and how the refit head did.

    ``curve`` is every candidate with its validation score (mean over folds under CV);
    ``test_scores`` are ``predict_proba`` (or ``decision_function``) on test, for the
    evaluation harness: on a store, one column per class of the store (its label indices),
    a class the head never saw scoring 0 (-inf for a decision function). Test fields are None
    when the source has no test rows.
    """

    head: str
    params: dict
    curve: list[tuple[dict, float]]
    estimator: BaseEstimator
    val_accuracy: float
    selection: str  # "val" or "cv<k>"
    select_seconds: float
    fit_seconds: float
    predict_seconds: float | None = None
    test_accuracy: float | None = None
    test_labels: np.ndarray | None = None
    test_pred: np.ndarray | None = None
    test_scores: np.ndarray | None = None
    test_ids: list[str] | None = None
    refit_on: str = "train+val"  # or "train" (always under CV)
    extra: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """JSON-serialisable figures (no arrays, no estimator)."""
        return {
            "head": self.head,
            "params": plain(self.params),
            "val_accuracy": self.val_accuracy,
            "test_accuracy": self.test_accuracy,
            "selection": self.selection,
            "select_seconds": self.select_seconds,
            "fit_seconds": self.fit_seconds,
            "predict_seconds": self.predict_seconds,
            "curve": [{"params": plain(p), "val_score": s} for p, s in self.curve],
        }


def _candidate_scores(
    head: BaseEstimator, candidates: list[dict], X_tr, y_tr, X_va, y_va, progress: bool
) -> tuple[list[float], list[float] | None]:
    """Validation accuracy of each candidate fitted on (X_tr, y_tr), and the validation log
    loss that a path already knows (NaN where it does not; None: nothing known)."""
    found = _path_scores(head, candidates, X_tr, y_tr, X_va, y_va, progress)
    if found is not None:
        return found
    scores = []
    for params in track(candidates, desc=type(head).__name__, enabled=progress):
        est = clone(head).set_params(**params).fit(X_tr, y_tr)
        scores.append(float(est.score(X_va, y_va)))
    return scores, None


def _path_scores(
    head: BaseEstimator, candidates: list[dict], X_tr, y_tr, X_va, y_va, progress: bool
) -> tuple[list[float], list[float] | None] | None:
    """:func:`_along_path` of the head's own path over its ``path_param`` (a warm-started C
    path; MLPs for every alpha side by side), on features preprocessed once (fitted on train
    only); None when the grid varies anything else or the head has no path."""
    if not _path_only(head, candidates):
        return None
    prep = head.preprocessor_for(X_tr).fit(X_tr)
    Z_tr, Z_va = prep.transform(X_tr), prep.transform(X_va)
    return _along_path(
        head,
        candidates,
        lambda values: head.path_accuracy(Z_tr, y_tr, values, Z_va, y_va, progress),
    )


def _path_only(head: BaseEstimator, candidates: list[dict]) -> bool:
    """Whether the candidates vary only the head's ``path_param``."""
    param = getattr(head, "path_param", None)
    return param is not None and all(set(c) == {param} for c in candidates)


def _along_path(
    head: BaseEstimator, candidates: list[dict], path
) -> tuple[list[float], list[float] | None] | None:
    """The candidates' validation accuracy and log loss (as :func:`_candidate_scores`), in the
    candidates' order, from ``path(values)``: a path over the values of the head's
    ``path_param``, given in increasing order, or None. The log loss of the tied values comes
    from the path's own solutions, so selection refits none of them."""
    values = [c[head.path_param] for c in candidates]
    order = np.argsort(values, kind="stable")  # warm starts go from strong to weak penalty
    fitted = path([values[i] for i in order])
    if fitted is None:
        return None

    def in_candidate_order(along: Sequence[float]) -> list[float]:
        out = np.empty(len(values))
        out[order] = along
        return out.tolist()

    losses = getattr(fitted, "val_log_loss", None)  # None: no tie, or no probabilities
    if losses is not None:
        losses = in_candidate_order(losses)
    return in_candidate_order(fitted.val_accuracy), losses


def best_candidate(accuracy: Sequence[float], log_loss: Sequence[float] | None = None) -> int:
    """The index of the best candidate: the highest validation accuracy; among candidates tied
    on it, the lowest validation log loss (``log_loss``: heads with ``predict_proba``; NaN
    where unknown), then the first (the smallest values). Few val rows tie many candidates:
    logreg's smallest C won a 31-way tie on 40 CIFAR val rows with every probability 0.100."""
    accuracy = np.asarray(accuracy, dtype=float)
    tied = np.flatnonzero(accuracy == accuracy.max())
    if log_loss is not None and len(tied) > 1:
        losses = np.asarray(log_loss, dtype=float)[tied]
        if not np.isnan(losses).all():
            tied = tied[losses == np.nanmin(losses)]
    return int(tied[0])


def val_log_loss(estimator: BaseEstimator, X: np.ndarray, y: np.ndarray) -> float:
    """Mean log loss of ``estimator.predict_proba`` on (X, y); a label the estimator never saw
    has probability 0, clipped as the evaluation clips it (``row_nll``)."""
    proba = estimator.predict_proba(X)
    column = {label: i for i, label in enumerate(np.asarray(estimator.classes_).tolist())}
    p = np.zeros(len(y))
    for row, label in enumerate(np.asarray(y).tolist()):
        if label in column:
            p[row] = proba[row, column[label]]
    return float(row_nll(p).mean())


def tied_log_loss(
    head: object, scores: Sequence[float], loss_of: Callable[[int], float]
) -> list[float] | None:
    """``loss_of(i)``, the validation log loss of candidate i, for the candidates tied at the
    best score, NaN for the others; None when there is no tie or ``head`` (an estimator or its
    class) has no ``predict_proba``. Only tied candidates are scored: a tie on many val rows
    is rare, and a path's accuracy costs less than its log loss."""
    scores = np.asarray(scores, dtype=float)
    tied = np.flatnonzero(scores == scores.max())
    if len(tied) < 2 or not hasattr(head, "predict_proba"):
        return None
    losses = np.full(len(scores), np.nan)
    for i in tied:
        losses[i] = loss_of(i)
    return losses.tolist()


def _known_or(known: list[float] | None, i: int, refit: Callable[[], float]) -> float:
    """Candidate i's validation log loss as its path knows it, else ``refit()``'s."""
    return known[i] if known is not None and not np.isnan(known[i]) else refit()


def _cv_splits(y: np.ndarray, cv: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    if not is_count(cv) or cv < 2:  # int() cut 2.5 folds to 2
        raise ConfigError(
            f"cv={cv!r} folds: cross-validation needs at least 2, a whole number; pass "
            "cv=5 (--cv 5), or add a val split to choose on instead."
        )
    _, counts = np.unique(y, return_counts=True)
    folds = min(int(cv), int(counts.min()))
    if folds < 2:
        raise ConfigError(
            f"No validation split and the rarest training class has "
            f"{counted(int(counts.min()), 'sample')}; "
            "cross-validation needs at least 2 per class. Add a val split or more samples."
        )
    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return list(skf.split(np.zeros(len(y)), y))


def select_and_fit(
    estimator: BaseEstimator | str,
    source: object,
    layer: str | None = None,
    *,
    grid: dict | list[dict] | None = None,
    cv: int = 5,
    seed: int | None = None,
    device: str | None = None,
    progress: bool = False,
    refit_on: str = "train+val",
) -> SelectionResult:
    """Choose hyper-parameters on val (or CV on train), refit on train+val, then predict test.

    ``estimator`` is a head name (``logreg``, ``linear_svm``, ``rbf_svm``, ``mlp``, ``knn``, ...:
    ``list_heads()``) or any scikit-learn classifier; ``source`` a FeatureStore or
    ``{"train": (X, y), ...}``; ``grid`` a parameter grid (default: the head's own, e.g. 45 C
    values for ``logreg``). Ties in validation accuracy go to the lowest validation log loss
    (heads with ``predict_proba``), then to the smallest values (e.g. logreg's smallest C),
    whatever order the grid lists them in: :func:`best_candidate`. Heads that stream
    (``streams_store``: ``logreg_stream``, ``knn_faiss``) read a FeatureStore chunk by chunk,
    never a whole split, and choose on its val split (one is required).

    ``seed`` seeds the CV folds and, for registered heads with randomness (``mlp``, the SVMs),
    the head's seed parameter; None keeps the head's own and folds seeded 0. ``device`` goes
    to heads with a ``device`` parameter (``logreg``); None keeps the head's own. A grid
    that names either parameter wins over them.

    ``refit_on="train"`` refits the chosen head on the train rows alone, val only choosing,
    as fine-tuning uses it: a data-size sweep's "N train images" then means N.
    """
    if refit_on not in REFITS:
        raise ConfigError(f"refit_on={refit_on!r} is not one of {', '.join(REFITS)}.")
    head = make_head(estimator) if isinstance(estimator, str) else clone(estimator)
    head.set_params(**run_params(head, seed=seed, device=device))
    name = estimator if isinstance(estimator, str) else (head_name(head) or type(head).__name__)
    if grid is None:
        if head_name(head) is None:
            raise ConfigError(f"{type(head).__name__} has no default grid; pass grid=.")
        grid = default_grid(head_name(head))
    check_head_grid(head, grid)
    candidates = list(ParameterGrid(in_increasing_order(grid)))
    if not candidates:
        raise ConfigError(f"The grid {grid!r} has no candidates.")
    if getattr(head, "streams_store", False) and _is_store(source):
        return _select_streamed(head, name, candidates, source, layer, progress, refit_on)
    data = FeatureSplits(source, layer)

    start = time.perf_counter()
    X_tr, y_tr = data.fit_rows("train")
    require_two_classes(y_tr, data.class_name)
    if data.has("val"):
        candidates = _as_fitted(head, candidates, len(y_tr))
        X_va, y_va = data.fit_rows("val")
        scores, known = _candidate_scores(head, candidates, X_tr, y_tr, X_va, y_va, progress)
        known_losses = [known]
        pairs = [(X_tr, y_tr, X_va, y_va)]
        X_fit, y_fit = X_tr, y_tr
        if refit_on == "train+val":
            X_fit, y_fit = np.concatenate([X_tr, X_va]), np.concatenate([y_tr, y_va])
        mode = "val"
    else:
        folds = _cv_splits(y_tr, cv, 0 if seed is None else seed)
        candidates = _as_fitted(head, candidates, min(len(a) for a, _ in folds))
        per_fold = [
            _candidate_scores(head, candidates, X_tr[a], y_tr[a], X_tr[b], y_tr[b], progress)
            for a, b in folds
        ]
        scores = np.mean([fold_scores for fold_scores, _ in per_fold], axis=0).tolist()
        known_losses = [known for _, known in per_fold]
        pairs = [(X_tr[a], y_tr[a], X_tr[b], y_tr[b]) for a, b in folds]
        X_fit, y_fit = X_tr, y_tr
        mode, refit_on = f"cv{len(folds)}", "train"

    def refit_loss(i: int, X, y, X_v, y_v) -> float:
        return val_log_loss(clone(head).set_params(**candidates[i]).fit(X, y), X_v, y_v)

    def loss_of(i: int) -> float:  # the mean over the folds under CV
        pairs_known = zip(pairs, known_losses, strict=True)
        return float(np.mean([_known_or(k, i, partial(refit_loss, i, *p)) for p, k in pairs_known]))

    losses = tied_log_loss(head, scores, loss_of)
    select_seconds = time.perf_counter() - start
    result = _refit(
        head, name, candidates, scores, losses, mode, select_seconds, lambda h: h.fit(X_fit, y_fit)
    )
    result.refit_on = refit_on
    held_out = [y for *_, y in pairs]
    _warn_if_no_better_than_one_class(result, held_out, data.class_name)
    if data.has("test"):  # only now, after the refit, is the test split read
        _test(result, [data.get("test")], data.ids("test"), data.classes)
    return result


def check_grid_entries(
    grid: Mapping,
    valid: Collection[str],
    where: str,
    what: str,
    example: Callable[[str, object], str],
    sequences: tuple[type, ...] = (Sequence, np.ndarray),
) -> None:
    """Every key of ``grid`` one of ``valid`` (else an UnknownNameError naming the closest,
    ``what`` saying what the names are) and every value a non-empty 1-D sequence of values
    (else a ConfigError whose fix is ``example(name, value)``, in the caller's words): checked
    before any candidate is built, so a bad key is not found at the first candidate's
    set_params. The head grids' and the fine-tune grid's checker."""
    for name, values in grid.items():
        if name not in valid:
            hint = did_you_mean(str(name), valid)
            raise UnknownNameError(
                f"{where}.{name}: not a {what}.{hint} Valid: {', '.join(sorted(valid))}."
            )
        # A str is a Sequence, but "0.1" would be searched as the values "0", ".", "1"; a
        # list may hold tuples (an MLP's layer sizes), an array is one value per entry.
        flat = not isinstance(values, str) and getattr(values, "ndim", 1) == 1
        if not (isinstance(values, sequences) and flat and len(values)):
            raise ConfigError(
                f"{where}.{name} must be a non-empty array of values, e.g. "
                f"{example(name, values)}; got {values!r}."
            )


def check_head_grid(head: BaseEstimator, grid: object) -> None:
    """A ConfigError for a ``select_and_fit`` grid that is not a dict of parameter -> list
    of values (or a list of such dicts, as scikit-learn allows), or whose parameter ``head``
    does not have (UnknownNameError), in a Python caller's words (pipelines check their grids
    before they get here; ``featpipe probe`` searches each head's default grid)."""
    dicts = [grid] if isinstance(grid, Mapping) else grid
    if not isinstance(dicts, list | tuple) or not all(isinstance(g, Mapping) for g in dicts):
        raise ConfigError(
            "grid must be a dict of parameter -> list of values (or a list of such dicts), "
            f"e.g. grid={{'C': [0.1, 1.0]}}; got {grid!r}."
        )
    params = head.get_params()

    def example(name: str, values: object) -> str:
        # The values given, as a list: the head's own value where none were given.
        return f"grid={{{name!r}: {_as_list(values, params[name])!r}}}"

    for i, each in enumerate(dicts):
        where = "grid" if each is grid else f"grid[{i}]"
        check_grid_entries(each, params, where, f"parameter of {type(head).__name__}", example)


def _as_list(values: object, own: object) -> list:
    """``values`` as the list of values a grid takes: a number written as a str read as the
    number ("0.1" -> [0.1]), a set listed, one value wrapped, nothing the head's ``own``."""
    if isinstance(values, str):
        for number in (int, float):
            with contextlib.suppress(ValueError):
                return [number(values)]
        return [values]
    if isinstance(values, set | frozenset):
        return in_increasing_order({"": list(values)})[""]
    if isinstance(values, np.ndarray):
        return np.ravel(values).tolist() or [own]
    if isinstance(values, Sequence):
        return list(values) or [own]
    return [values]


def in_increasing_order(grid: dict | list[dict]) -> dict | list[dict]:
    """``grid`` with each parameter's values in increasing order where they compare, so that
    an exact tie goes to the same candidate, the first, whatever order the grid lists them in
    (logreg chose C=10 of [10, 0.1] and C=0.1 of [0.1, 10] at the same val accuracy); the
    fine-tune grid too. Values that do not compare (None and numbers) keep their order;
    ParameterGrid refuses a bad grid."""

    def ordered(values):
        try:
            return sorted(values) if isinstance(values, (list, tuple, np.ndarray)) else values
        except TypeError:
            return values

    if isinstance(grid, dict):
        return {name: ordered(values) for name, values in grid.items()}
    if isinstance(grid, list):
        return [in_increasing_order(g) if isinstance(g, dict) else g for g in grid]
    return grid


def _as_fitted(head: BaseEstimator, candidates: list[dict], n_samples: int) -> list[dict]:
    """The candidates as a fit on ``n_samples`` rows runs them, each once (kNN's k is capped
    at the rows: k=10 and k=20 on 6 rows both run k=6, and the refit on train+val must use
    the 6 that was validated, not 10)."""
    fitted = getattr(head, "params_fitted_on", None)
    if fitted is None:
        return candidates
    out: list[dict] = []
    for params in candidates:
        params = fitted(params, n_samples)
        if params not in out:
            out.append(params)
    return out


def require_two_classes(y: np.ndarray, class_name) -> None:
    """Every head is refused the same clear error for train rows of fewer than 2 classes
    (some heads' own errors were tracebacks, and kNN fitted a head that predicts one class);
    few-shot too."""
    present = np.unique(y)
    if len(present) < 2:
        got = "no rows" if len(y) == 0 else f"only class {class_name(present[0])!r}"
        raise ConfigError(
            f"The train split holds {got}; a head needs rows of at least 2 classes to learn "
            "from. Check the source's labels and splits."
        )


def _refit(
    head: BaseEstimator,
    name: str,
    candidates: list[dict],
    scores: list[float],
    losses: list[float] | None,
    mode: str,
    select_seconds: float,
    fit,
) -> SelectionResult:
    """Refit the best candidate (:func:`best_candidate` of the scores and the tied candidates'
    validation log ``losses``) with ``fit(head)``: on train+val, or train under CV."""
    best = best_candidate(scores, losses)
    start = time.perf_counter()
    final = fit(head.set_params(**candidates[best]))
    return SelectionResult(
        head=name,
        params=candidates[best],
        curve=list(zip(candidates, scores, strict=True)),
        estimator=final,
        val_accuracy=float(scores[best]),
        selection=mode,
        select_seconds=select_seconds,
        fit_seconds=time.perf_counter() - start,
    )


def no_better_than_one_class(
    score: float, held_out: list[np.ndarray]
) -> tuple[float, object] | None:
    """``(share, label)`` when ``score``, an accuracy on the ``held_out`` label sets (their
    mean for several), is no better than predicting the most common class of each set for
    every row (share: that accuracy; label: the most common class over all); else None.
    Fine-tuning's choice of epoch and candidate uses the same rule."""
    shares = [np.unique(y, return_counts=True)[1].max() / len(y) for y in held_out]
    share = float(np.mean(shares))
    if score > share:
        return None
    labels, counts = np.unique(np.concatenate(held_out), return_counts=True)
    return share, labels[counts.argmax()]


def _warn_if_no_better_than_one_class(
    result: SelectionResult, held_out: list[np.ndarray], class_name, stacklevel: int = 3
) -> None:
    """Warn when the chosen candidate's val accuracy is no better than predicting the most
    common class of the rows it was scored on for every row: a few val rows (or rows of one
    class) cannot tell the candidates from a head that ignores the features, and a tie can go
    to one (logreg's smallest C, whose head predicted the most common class for every test
    row: 100 % on 2 val rows, 17 % on test). ``held_out``: the labels of the val
    split, or of each cross-validation fold's held-out rows (the score is their mean, so the
    one-class share is too: kNN with k=5 on 8+2 train rows scored 80 % and predicted the
    common class for every test row)."""
    found = no_better_than_one_class(result.val_accuracy, held_out)
    if found is None:
        return
    share, common = found[0], class_name(found[1])
    n = sum(len(y) for y in held_out)
    if result.selection == "val":
        rows = f"on {n} val rows"
        fix = (
            "Give the val split more rows of more classes, or leave it out to choose by "
            "cross-validation on train."
        )
    else:
        rows = f"by {len(held_out)}-fold cross-validation on {n} train rows"
        fix = "Give the train split more rows of more classes, or add a val split."
    warnings.warn(
        f"{result.head} chose {plain(result.params)} at {100 * result.val_accuracy:.1f} % "
        f"{rows}, no better than predicting class {common!r} for every row "
        f"({100 * share:.1f} %): these rows cannot tell the candidates apart from a head "
        "that ignores the features, and ties go to the lowest validation log loss, then to "
        f"the candidate of the smallest values (for logreg the smallest C). {fix}",
        UserWarning,
        stacklevel=stacklevel,  # select_and_fit's caller
    )


def _test(
    result: SelectionResult, chunks, ids: list[str] | None, classes: list[str] | None = None
) -> None:
    """Predict the test rows, given as (X, y) chunks, with the refitted head; ``classes``:
    the store's class names (None for arrays)."""
    preds, scores, labels, seconds = [], [], [], 0.0
    start = time.perf_counter()
    for X, y in chunks:  # timed: reading each chunk and predicting it
        preds.append(result.estimator.predict(X))
        seconds += time.perf_counter() - start
        # The scores only feed top-5, log loss and ECE: a cost of measuring, not of predicting
        # (a fine-tune's one pass gives both).
        scores.append(_scores(result.estimator, X))
        labels.append(y)
        start = time.perf_counter()
    result.predict_seconds = seconds
    result.test_pred = np.concatenate(preds)
    result.test_scores = None if scores[0] is None else np.concatenate(scores)
    if result.test_scores is not None and classes is not None:
        result.test_scores = _store_columns(result.test_scores, result.estimator, len(classes))
    result.test_labels = np.concatenate(labels)
    result.test_accuracy = float(np.mean(result.test_pred == result.test_labels))
    result.test_ids = ids


def _store_columns(scores: np.ndarray, estimator: BaseEstimator, n_classes: int) -> np.ndarray:
    """``scores`` with one column per class of the store, as the evaluation reads them. A head
    fitted on rows without some class (a small sweep size, a class only in test) has columns
    for its ``classes_`` alone, and column j was read as class j."""
    classes = np.asarray(estimator.classes_)
    if np.array_equal(classes, np.arange(n_classes)):
        return scores
    probabilities = hasattr(estimator, "predict_proba")
    if scores.ndim == 1:  # a binary decision function: positive means classes[1]
        scores = np.stack([-scores, scores], axis=1)
    out = np.full((len(scores), n_classes), 0.0 if probabilities else -np.inf)
    out[:, classes] = scores
    return out


def _is_store(source: object) -> bool:
    """Whether ``source`` is a store the streamed heads read chunk by chunk: a FeatureStore or
    a data-size sweep's TrainSubset of one (which streams only its own train rows)."""
    from featpipe.store import FeatureStore, TrainSubset  # late: heads run on arrays alone

    return isinstance(source, (FeatureStore, TrainSubset))


def _select_streamed(
    head: BaseEstimator,
    name: str,
    candidates: list[dict],
    store,
    layer: str,
    progress: bool,
    refit_on: str,
) -> SelectionResult:
    """Selection for heads that read a store chunk by chunk (``streams_store``), so no split
    is ever held whole: choose on val, refit (on ``refit_on``), then predict test chunk by chunk.
    Under torchrun every rank runs it, and the heads share their passes over the rows."""
    counts = store.split_counts()
    if counts.get("val", 0) == 0:
        raise ConfigError(
            f"{type(head).__name__} reads {store.path} chunk by chunk and chooses its "
            "parameters on the val split, which this store does not have (cross-validation "
            "would need the rows in memory). Extract with a val split (val_fraction=0.1; CLI: "
            "featpipe extract --val-fraction 0.1), or use an in-memory head."
        )
    require_two_classes(store.labels("train"), lambda label: store.classes[int(label)])
    candidates = _as_fitted(head, candidates, counts.get("train", 0))
    start = time.perf_counter()
    scores = None
    known = None  # the validation log loss a path knows, NaN where it does not
    if _path_only(head, candidates) and hasattr(head, "store_path"):
        found = _along_path(
            head, candidates, lambda values: head.store_path(store, layer, values, progress)
        )
        if found is not None:
            scores, known = found
    if scores is None:
        scores = []
        for params in track(candidates, desc=type(head).__name__, enabled=progress):
            est = clone(head).set_params(**params).fit_store(store, layer, ["train"])
            hits = [(est.predict(X) == y).sum() for X, y in store.iter_chunks(layer, "val")]
            scores.append(float(np.sum(hits) / counts["val"]))

    def refit_loss(i: int) -> float:
        est = clone(head).set_params(**candidates[i]).fit_store(store, layer, ["train"])
        losses = [val_log_loss(est, X, y) * len(y) for X, y in store.iter_chunks(layer, "val")]
        return float(np.sum(losses) / counts["val"])

    def loss_of(i: int) -> float:
        return _known_or(known, i, lambda: refit_loss(i))

    losses = tied_log_loss(head, scores, loss_of)
    select_seconds = time.perf_counter() - start
    result = _refit(
        head,
        name,
        candidates,
        scores,
        losses,
        "val",
        select_seconds,
        lambda h: h.fit_store(store, layer, refit_on.split("+")),
    )
    result.refit_on = refit_on
    y_va = store.labels("val")
    _warn_if_no_better_than_one_class(
        result, [y_va], lambda label: store.classes[int(label)], stacklevel=4
    )
    if counts.get("test", 0):
        _test(result, store.iter_chunks(layer, "test"), store.ids("test"), store.classes)
    return result


def _scores(est: BaseEstimator, X: np.ndarray) -> np.ndarray | None:
    if hasattr(est, "predict_proba"):
        return est.predict_proba(X)
    if hasattr(est, "decision_function"):
        return est.decision_function(X)
    return None
