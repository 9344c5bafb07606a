"""Time the selection grids of the three fast heads against their scikit-learn counterparts,
on the same standardised features, grids and tolerances, in one run:

- logreg: 45 values of C, featpipe's warm-started torch L-BFGS path against a warm-started
  ``LogisticRegression`` loop;
- linear_svm: the head's 6 values of C, the torch L-BFGS squared-hinge path against
  ``LinearSVC`` (liblinear, which has no warm start) at each C;
- mlp: the head's 3 alphas, featpipe's torch MLP (every alpha side by side) against
  ``MLPClassifier`` at each alpha, each as ``MLPProbe`` makes it by default (``solver="torch"``
  and ``solver="sklearn"``: the same settings, early stopping included, except the patience,
  whose ``"auto"`` is the torch head's step-based one and scikit-learn's 10 epochs). A second
  line (``mlp-same``) gives ``MLPClassifier`` the torch head's patience too, to show how much
  of the speed-up is the stopping rule.

    python benchmarks/heads_path.py data/cache/cifar10-....h5 --layer pooled
    python benchmarks/heads_path.py STORE --limit-train 5000 --heads linear_svm,mlp

Each head prints one line: the C or alpha each side chose on the val split (10 % of train is
held out when the store has none), its val and test accuracy, both times and
``speed-up (sklearn / featpipe): N.Nx``. Times include moving the features to the device;
``--cpu-time`` measures CPU seconds instead of wall seconds (on CPU, one thread).
"""

from __future__ import annotations

import os
import time
import warnings

import numpy as np
import torch
from logreg_path import load, parser, sklearn_path  # the same data, options, sklearn loop
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from featpipe.device import resolve_device
from featpipe.heads import (
    LinearSVMProbe,
    LogisticProbe,
    MLPProbe,
    TorchLogisticRegression,
    linear_svm_path,
    logreg_path,
    mlp_path,
)
from featpipe.heads.estimators import _MLP_SHARED
from featpipe.heads.registry import default_grid

clock = time.perf_counter  # time.process_time with --cpu-time


def timed(fn, *args, **kwargs):
    start = clock()
    out = fn(*args, **kwargs)
    return out, clock() - start


def line(name, grid_name, ours, ours_s, ref_name, ref, ref_s) -> str:
    """ours / ref: (chosen value, val accuracy, test accuracy)."""

    def side(label, chosen, seconds):
        value, val, test = chosen
        return f"{label} {seconds:7.1f} s ({grid_name}={value:.3g}, val {val:.4f}, test {test:.4f})"

    return (
        f"{name:<10} {side('featpipe', ours, ours_s)} | {side(ref_name, ref, ref_s)} | "
        f"speed-up (sklearn / featpipe): {ref_s / ours_s:.1f}x"
    )


def bench_logreg(d, args) -> str:
    (X, y), (Xv, yv), (Xt, yt) = d
    head = LogisticProbe()
    Cs = default_grid("logreg")["C"]
    path, ours_s = timed(
        logreg_path, X, y, Cs, X_val=Xv, y_val=yv, tol=head.tol, max_iter=head.max_iter,
        device=args.device, n_threads=args.threads,
    )  # fmt: skip
    best = path.best_index
    ours = (Cs[best], path.val_accuracy[best], path.estimator(best).score(Xt, yt))
    (_, accs, models, est), ref_s = timed(sklearn_path, X, y, Xv, yv, Cs, head.tol, head.max_iter)
    i = int(np.argmax(accs))
    est.coef_, est.intercept_ = models[i]
    return line("logreg", "C", ours, ours_s, "sklearn", (Cs[i], accs[i], est.score(Xt, yt)), ref_s)


def bench_linear_svm(d, args) -> str:
    (X, y), (Xv, yv), (Xt, yt) = d
    head = LinearSVMProbe()
    Cs = default_grid("linear_svm")["C"]
    path, ours_s = timed(
        linear_svm_path, X, y, Cs, X_val=Xv, y_val=yv, tol=head.tol, max_iter=head.max_iter,
        device=args.device, n_threads=args.threads,
    )  # fmt: skip
    best = path.best_index
    ours = (Cs[best], path.val_accuracy[best], path.estimator(best).score(Xt, yt))
    print(f"linear_svm featpipe path: {ours_s:.1f} s for {len(Cs)} C", flush=True)
    start, fits = clock(), []
    for C in Cs:  # one line per C: liblinear can take many minutes at a large C
        svc = LinearSVC(C=C, tol=head.tol, max_iter=head.max_iter, random_state=0).fit(X, y)
        fits.append((svc.score(Xv, yv), svc))
        print(f"  liblinear C={C:g}: {clock() - start:.1f} s so far", flush=True)
    ref_s = clock() - start
    i = int(np.argmax([a for a, _ in fits]))
    ref = (Cs[i], fits[i][0], fits[i][1].score(Xt, yt))
    return line("linear_svm", "C", ours, ours_s, "liblinear", ref, ref_s)


def sklearn_mlp(d, alphas, params) -> tuple[tuple, float, list[int]]:
    """MLPClassifier at each alpha: (chosen alpha, val, test), seconds, epochs per alpha."""
    (X, y), (Xv, yv), (Xt, yt) = d
    start, fits = clock(), []
    for alpha in alphas:
        mlp = MLPClassifier(**{**params, "alpha": alpha}).fit(X, y)
        fits.append((mlp.score(Xv, yv), mlp))
    seconds = clock() - start
    i = int(np.argmax([a for a, _ in fits]))
    return (alphas[i], fits[i][0], fits[i][1].score(Xt, yt)), seconds, [m.n_iter_ for _, m in fits]


def bench_mlp(d, args) -> str:
    (X, y), (Xv, yv), (Xt, yt) = d
    shared = MLPProbe().get_params()
    shared = {k: shared[k] for k in _MLP_SHARED if k != "alpha"}
    alphas = default_grid("mlp")["alpha"]
    path, ours_s = timed(
        mlp_path, X, y, alphas, X_val=Xv, y_val=yv, device=args.device,
        n_threads=args.threads, **shared,
    )  # fmt: skip
    best = path.best_index
    ours = (alphas[best], path.val_accuracy[best], path.estimators[best].score(Xt, yt))
    sk_params = MLPProbe(solver="sklearn")._make_classifier(None).get_params()
    ref, ref_s, ref_epochs = sklearn_mlp(d, alphas, sk_params)
    patience = path.estimators[0].n_iter_no_change_
    if patience == sk_params["n_iter_no_change"]:  # small sets: the same rule on both sides
        same, same_s, same_epochs = ref, ref_s, ref_epochs
    else:
        same, same_s, same_epochs = sklearn_mlp(
            d, alphas, {**sk_params, "n_iter_no_change": patience}
        )
    print(
        f"mlp epochs per alpha {alphas}: featpipe {[e.n_iter_ for e in path.estimators]} "
        f"(patience {patience}, {path.estimators[0].precision_} products), sklearn "
        f"{ref_epochs} (patience {sk_params['n_iter_no_change']}), sklearn at patience "
        f"{patience} {same_epochs}"
    )
    print(line("mlp-same", "alpha", ours, ours_s, f"MLPClassifier(n_iter_no_change={patience})",
               same, same_s))  # fmt: skip
    return line("mlp", "alpha", ours, ours_s, "MLPClassifier", ref, ref_s)


BENCHES = {"logreg": bench_logreg, "linear_svm": bench_linear_svm, "mlp": bench_mlp}


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--heads", default="logreg,linear_svm,mlp", help="comma-separated subset")
    p.add_argument(
        "--cpu-time",
        action="store_true",
        help="time by this process's CPU seconds, not the wall clock: steadier on a machine "
        "busy with other jobs (use with --threads 1 and OMP/OPENBLAS_NUM_THREADS=1)",
    )
    args = p.parse_args()
    if args.cpu_time:
        global clock
        clock = time.process_time
    if not args.store and not args.synthetic:
        p.error("give a store path or --synthetic N D C")
    unknown = set(args.heads.split(",")) - set(BENCHES)
    if unknown:
        p.error(f"unknown heads {sorted(unknown)}; valid: {', '.join(BENCHES)}")
    warnings.simplefilter("ignore", ConvergenceWarning)  # large C hits max_iter on both sides

    data = load(args)
    scaler = StandardScaler().fit(data["train"][0])
    d = [(scaler.transform(data[s][0]).astype(np.float32), data[s][1]) for s in ("train", "val")]
    d.append((scaler.transform(data["test"][0]).astype(np.float32), data["test"][1]))
    device = resolve_device(args.device)
    args.device = str(device)
    print(
        f"train {d[0][0].shape}, val {len(d[1][1])}, test {len(d[2][1])}; torch device "
        f"{device}, CPU threads {args.threads or os.cpu_count()}"
        + (f", GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else "")
    )
    # One tiny fit first: torch's one-off optimiser import and CUDA context are not path cost.
    TorchLogisticRegression(device=args.device).fit(d[0][0][:50], np.arange(50) % 2)
    for name in args.heads.split(","):
        print(BENCHES[name](d, args), flush=True)


if __name__ == "__main__":
    main()
