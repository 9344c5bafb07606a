"""Time the 45-value C path of logistic regression: featpipe's torch L-BFGS against a
warm-started scikit-learn loop, on the same standardised features, in one run.

    python benchmarks/logreg_path.py data/cache/cifar10-....h5 --layer pooled
    python benchmarks/logreg_path.py --synthetic 10000 1280 10 --device cpu

Both solvers get the same tol and max_iter; C is chosen on the val split (10 % of train is
held out when the store has none) and the test accuracy of that C's solution is printed.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np
import torch
from sklearn.datasets import make_classification
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from featpipe.device import resolve_device
from featpipe.heads import TorchLogisticRegression, logreg_path
from featpipe.heads.registry import LOGREG_CS


def load(args: argparse.Namespace) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    if args.synthetic:
        n, d, c = args.synthetic
        X, y = make_classification(
            n_samples=int(n * 1.4),
            n_features=d,
            n_informative=min(d, 64),
            n_redundant=0,
            n_classes=c,
            n_clusters_per_class=1,
            class_sep=0.8,
            random_state=0,
        )
        X = X.astype(np.float32)
        X_tr, X_rest, y_tr, y_rest = train_test_split(
            X, y, train_size=n, stratify=y, random_state=0
        )
        X_va, X_te, y_va, y_te = train_test_split(
            X_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=0
        )
        return {"train": (X_tr, y_tr), "val": (X_va, y_va), "test": (X_te, y_te)}
    from featpipe.store import FeatureStore

    store = FeatureStore(args.store)
    out = {
        s: store.arrays(args.layer, s)
        for s in ("train", "val", "test")
        if store.split_counts().get(s, 0)
    }
    if "val" not in out:
        X, y = out["train"]
        X_tr, X_va, y_tr, y_va = train_test_split(X, y, test_size=0.1, stratify=y, random_state=0)
        out["train"], out["val"] = (X_tr, y_tr), (X_va, y_va)
    if args.limit_train and args.limit_train < len(out["train"][1]):
        X, y = out["train"]  # a stratified subset, for machines where the full path is too slow
        X, _, y, _ = train_test_split(X, y, train_size=args.limit_train, stratify=y, random_state=0)
        out["train"] = (X, y)
    return out


def sklearn_path(X, y, X_va, y_va, Cs, tol, max_iter):
    """(seconds, val accuracies, (coef, intercept) per C, the estimator) of the warm loop."""
    est = LogisticRegression(warm_start=True, tol=tol, max_iter=max_iter)
    accs, models = [], []
    start = time.perf_counter()
    for C in Cs:
        est.set_params(C=C).fit(X, y)
        accs.append(est.score(X_va, y_va))
        models.append((est.coef_.copy(), est.intercept_.copy()))
    return time.perf_counter() - start, accs, models, est


def parser(doc: str) -> argparse.ArgumentParser:
    """The options :func:`load` reads, and the torch device and threads."""
    p = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("store", nargs="?", help="feature store (.h5)")
    p.add_argument("--layer", default="pooled")
    p.add_argument(
        "--synthetic",
        nargs=3,
        type=int,
        metavar=("N", "D", "C"),
        help="generate N training rows of D features in C classes instead",
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (torch solvers)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: all)")
    p.add_argument("--limit-train", type=int, help="use a stratified subset of N train rows")
    return p


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--max-iter", type=int, default=1000)
    p.add_argument("--n-cs", type=int, default=len(LOGREG_CS), help="C values (log 1e-6..1e5)")
    p.add_argument("--skip-sklearn", action="store_true", help="time the torch path only")
    args = p.parse_args()
    if not args.store and not args.synthetic:
        p.error("give a store path or --synthetic N D C")
    warnings.simplefilter("ignore", ConvergenceWarning)  # large C hits max_iter in both

    data = load(args)
    scaler = StandardScaler().fit(data["train"][0])
    (X_tr, y_tr), (X_va, y_va), (X_te, y_te) = (
        (scaler.transform(data[s][0]).astype(np.float32), data[s][1])
        for s in ("train", "val", "test")
    )
    Cs = np.logspace(-6, 5, args.n_cs).tolist()
    device = resolve_device(args.device)
    print(
        f"train {X_tr.shape}, val {len(y_va)}, test {len(y_te)}, {len(np.unique(y_tr))} "
        f"classes, {len(Cs)} C values, tol={args.tol}, max_iter={args.max_iter}"
    )
    print(
        f"torch device: {device}, CPU threads: {args.threads or os.cpu_count()}"
        + (f", GPU: {torch.cuda.get_device_name(device)}" if device.type == "cuda" else "")
    )

    # One tiny fit first: torch's one-off optimiser import and CUDA context are not path cost.
    TorchLogisticRegression(device=str(device)).fit(X_tr[:50], np.arange(50) % 2)
    path = logreg_path(
        X_tr,
        y_tr,
        Cs,
        X_val=X_va,
        y_val=y_va,
        tol=args.tol,
        max_iter=args.max_iter,
        device=str(device),
        n_threads=args.threads,
        progress=True,
    )
    best = path.best_index
    torch_test = path.estimator(best).score(X_te, y_te)
    print(
        f"torch L-BFGS path: {path.seconds:8.2f} s  ({sum(path.n_iter)} iterations)  "
        f"chosen C={Cs[best]:.3g}  val {path.val_accuracy[best]:.4f}  test {torch_test:.4f}"
    )
    if args.skip_sklearn:
        return
    sk_seconds, sk_accs, sk_models, ref = sklearn_path(
        X_tr, y_tr, X_va, y_va, Cs, args.tol, args.max_iter
    )
    sk_best = int(np.argmax(sk_accs))
    ref.coef_, ref.intercept_ = sk_models[sk_best]  # score the chosen C's solution
    print(
        f"sklearn loop:      {sk_seconds:8.2f} s  chosen C={Cs[sk_best]:.3g}  "
        f"val {sk_accs[sk_best]:.4f}  test {ref.score(X_te, y_te):.4f}"
    )
    print(f"speed-up (sklearn / torch): {sk_seconds / path.seconds:.1f}x")


if __name__ == "__main__":
    main()
