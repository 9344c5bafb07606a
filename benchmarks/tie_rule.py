"""Which candidate should win a tie in validation accuracy? Compare three tie rules for
logistic regression's C grid over many small random splits of one feature store, where a
small val split ties many Cs:

- ``smallest``: the smallest tied C (the rule before the log-loss tie-break);
- ``min-loss``: the tied C of the lowest mean val log loss (featpipe's rule:
  ``best_candidate``);
- ``one-se``: among tied Cs, the smallest whose mean val log loss is within one standard error
  of the lowest. The SE is that of the paired per-row differences (candidate minus the
  minimum's candidate, same val rows): the candidates are scored on the same rows, so the
  rows' own spread (some digits are hard for every C) is not noise between them.
- ``one-se-min``: the same with the SE of the minimum's own per-row NLLs (the textbook one-SE
  rule), for comparison.

For each seed the store's rows (all splits pooled) are split at random, stratified, into
``--train`` rows, ``--val`` rows and the rest as test. The C path is fitted once on train
(``LogisticProbe``'s preprocessing and warm-started path, as selection runs it), each rule
picks its C from the path's val accuracy and per-row val NLLs, and each picked C is refitted
on train+val and scored on test, as ``select_and_fit`` does. Per rule it prints the mean test
accuracy and log loss, the paired wins/losses in test accuracy against ``min-loss`` per
split (and against ``smallest``), and how often each C was chosen; ``featpipe`` is
``best_candidate`` itself, which should pick ``min-loss``'s C in every split.

    python benchmarks/tie_rule.py data/cache/digits-efficientnet_lite0-....h5 --seeds 0-19
"""

from __future__ import annotations

import argparse
import warnings
from collections import Counter

import numpy as np
from sklearn.base import clone
from sklearn.model_selection import train_test_split

from featpipe.evaluate.metrics import row_nll
from featpipe.heads import LogisticProbe
from featpipe.heads.registry import LOGREG_CS
from featpipe.heads.selection import best_candidate
from featpipe.store import FeatureStore

RULES = ("smallest", "min-loss", "one-se", "one-se-min")


def seeds(text: str) -> list[int]:
    """``0-19`` or ``0,3,5`` (or both: ``0-9,20``)."""
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def true_class_nll(proba: np.ndarray, classes: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-row NLL of the true class (0 probability for a class the head never saw)."""
    column = {c: i for i, c in enumerate(classes.tolist())}
    p = np.array([proba[r, column[c]] if c in column else 0.0 for r, c in enumerate(y.tolist())])
    return row_nll(p)


def pick(rule: str, accuracy: np.ndarray, nll: dict[int, np.ndarray]) -> int:
    """The index ``rule`` chooses; ``nll``: per-row val NLLs of the tied candidates."""
    tied = np.flatnonzero(accuracy == accuracy.max())
    if rule == "smallest" or len(tied) == 1:
        return int(tied[0])
    means = np.array([nll[i].mean() for i in tied])
    best = int(tied[means.argmin()])
    if rule == "min-loss":
        return best
    n = len(nll[best])
    for i in tied:  # increasing C: the first within one SE
        if rule == "one-se":
            d = nll[i] - nll[best]
            se = d.std(ddof=1) / np.sqrt(n)
        else:
            d, se = nll[i], nll[best].std(ddof=1) / np.sqrt(n)
        if d.mean() - (0 if rule == "one-se" else nll[best].mean()) <= se:
            return int(i)
    return best


def one_split(X, y, seed: int, n_train: int, n_val: int, Cs: list[float]) -> dict:
    X_tr, X_rest, y_tr, y_rest = train_test_split(
        X, y, train_size=n_train, stratify=y, random_state=seed
    )
    X_va, X_te, y_va, y_te = train_test_split(
        X_rest, y_rest, train_size=n_val, stratify=y_rest, random_state=seed
    )
    head = LogisticProbe()
    prep = head.preprocessor_for(X_tr).fit(X_tr)
    Z_tr, Z_va = prep.transform(X_tr), prep.transform(X_va)
    path = head.path_accuracy(Z_tr, y_tr, Cs, Z_va, y_va)
    accuracy = np.asarray(path.val_accuracy, dtype=float)
    tied = np.flatnonzero(accuracy == accuracy.max())
    nll = {
        int(i): true_class_nll(path.estimator(i).predict_proba(Z_va), path.classes, y_va)
        for i in tied
    }
    chosen = {rule: pick(rule, accuracy, nll) for rule in RULES}
    losses = [nll[i].mean() if i in nll else np.nan for i in range(len(Cs))]
    chosen["featpipe"] = best_candidate(accuracy, losses)
    X_fit, y_fit = np.concatenate([X_tr, X_va]), np.concatenate([y_tr, y_va])
    test = {}
    for i in set(chosen.values()):
        est = clone(head).set_params(C=Cs[i]).fit(X_fit, y_fit)
        proba = est.predict_proba(X_te)
        test[i] = (
            float(np.mean(est.predict(X_te) == y_te)),
            float(true_class_nll(proba, est.classes_, y_te).mean()),
        )
    return {"chosen": chosen, "test": test, "n_tied": len(tied), "val": accuracy.max()}


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("store", help="feature store (.h5); every split's rows are pooled")
    p.add_argument("--layer", default="pooled")
    p.add_argument("--seeds", type=seeds, default=seeds("0-19"), help="e.g. 0-19 (default)")
    p.add_argument("--train", type=int, default=200, help="train rows per split (200)")
    p.add_argument("--val", type=int, default=40, help="val rows per split (40)")
    args = p.parse_args()

    store = FeatureStore(args.store)
    parts = [store.arrays(args.layer, s) for s, n in store.split_counts().items() if n]
    X = np.concatenate([x for x, _ in parts]).astype(np.float32)
    y = np.concatenate([labels for _, labels in parts])
    Cs = list(LOGREG_CS)
    print(f"{len(y)} rows of {X.shape[1]} features; {len(args.seeds)} splits of "
          f"{args.train} train / {args.val} val / {len(y) - args.train - args.val} test; "
          f"{len(Cs)} Cs")  # fmt: skip

    runs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence at the largest Cs: the same for every rule
        for seed in args.seeds:
            run = one_split(X, y, seed, args.train, args.val, Cs)
            runs.append(run)
            picks = " ".join(f"{r}={Cs[run['chosen'][r]]:.3g}" for r in RULES)
            print(f"seed {seed}: val {100 * run['val']:.1f} %, {run['n_tied']} tied; {picks}")

    def test_accuracy(rule: str) -> np.ndarray:
        return np.array([run["test"][run["chosen"][rule]][0] for run in runs])

    ref, old = test_accuracy("min-loss"), test_accuracy("smallest")
    print(f"\n{'rule':<11} {'test acc %':>10} {'test loss':>9} {'vs min-loss W/L':>15} "
          f"{'vs smallest W/L':>15}  chosen C")  # fmt: skip
    for rule in (*RULES, "featpipe"):
        acc = test_accuracy(rule)
        loss = np.array([run["test"][run["chosen"][rule]][1] for run in runs])
        wins, losses = int(np.sum(acc > ref)), int(np.sum(acc < ref))
        worst = 100 * float(np.min(acc - ref))
        counts = Counter(f"{Cs[run['chosen'][rule]]:.3g}" for run in runs)
        spread = ", ".join(f"{c}x{n}" for c, n in sorted(counts.items(), key=lambda t: float(t[0])))
        old_w, old_l = int(np.sum(acc > old)), int(np.sum(acc < old))
        print(f"{rule:<11} {100 * acc.mean():>10.2f} {loss.mean():>9.3f} "
              f"{wins:>7}/{losses:<3} (worst {worst:+.1f}) "
              f"{old_w:>7}/{old_l:<7}  {spread}")  # fmt: skip
    same = sum(run["chosen"]["featpipe"] == run["chosen"]["min-loss"] for run in runs)
    print(f"\nfeatpipe's best_candidate chose min-loss's C in {same} of {len(runs)} splits")


if __name__ == "__main__":
    main()
