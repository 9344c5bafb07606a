"""``featpipe probe`` (select, refit and test heads on a store) and ``featpipe predict``."""

from __future__ import annotations

import argparse
import csv
import json
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from featpipe.cli.options import add_force_option, pick_layer
from featpipe.errors import ConfigError, NonFiniteFeaturesError
from featpipe.interrupt import Interrupted
from featpipe.words import agrees, counted, listed

PROBE_EXAMPLES = """\
examples:
  featpipe probe data/cache/digits-abc.h5 --layer pooled
  featpipe probe store.h5 --layer blocks.5:avg --heads logreg,knn --out results.json
  featpipe probe store.h5 --heads logreg --few-shot 5 --draws 10 --save-dir heads/
  torchrun --nproc-per-node 4 -m featpipe probe store.h5 --heads logreg_stream --out r.json

Hyper-parameters are chosen on the val split (stratified CV on train when there is none),
the head is refitted on train+val, and only then is the test split read.
"""

PREDICT_EXAMPLES = """\
examples:
  featpipe predict heads/logreg.skops store.h5 --split test --out preds.csv
  featpipe predict heads/logreg.skops photos/*.jpg
  featpipe predict heads/logreg.skops photos/             # every image in a folder

Columns (CSV) or keys (JSON): id, predicted_class, probability (the predicted class's), then
probability_<class> for each class the head knows, for heads with probabilities (not the SVMs).
A class of the head's store that it never saw (no train rows) has no column: a warning names it.

Features for images are computed with the backbone and layer named in the head's sidecar,
decoded as its store's images were (--decode fast included); a warning says where they cannot
be (a store extracted on CUDA, predicted on the CPU).
.skops heads are loaded without running code; .joblib heads are pickles, which can run code
when loaded (a warning says so): only load those from a source you trust.
"""

STORE_SUFFIXES = (".h5", ".hdf5")
CV_FOLDS = 5  # --cv left out: select_and_fit's default


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (argparse names the option in its message)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    from featpipe.heads.registry import list_heads

    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser(
        "probe",
        help="select, refit and test classical heads on a feature store",
        description="Train classical heads on cached features with leakage-free "
        "hyper-parameter\nselection, and print their val and test accuracy as a table.",
        epilog=PROBE_EXAMPLES,
        formatter_class=fmt,
    )
    # metavar: named as in the other commands' usage and in argparse's "required" error.
    p.add_argument(
        "store", metavar="STORE", help="feature store (.h5) written by `featpipe extract`"
    )
    p.add_argument(
        "--layer",
        help="feature layer (default: the store's only layer); join stored layers with '+' "
        "(pooled+blocks.5:avg) to concatenate them, each standardised on train",
    )
    p.add_argument(
        "--heads",
        default="logreg",
        help=f"comma-separated heads from: {', '.join(list_heads())} (default: logreg)",
    )
    p.add_argument(
        "--cv",
        type=int,
        help=f"folds of the cross-validation that chooses each head's settings when the store "
        f"has no val split (default: {CV_FOLDS}); refused with a val split, which chooses them",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the randomised heads (mlp, SVMs), CV folds and few-shot draws "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="where heads with a torch solver (logreg, linear_svm, mlp) run: auto, cpu, cuda "
        "or cuda:N (default: %(default)s, the first GPU if there is one)",
    )
    p.add_argument(
        "--few-shot",
        type=positive_int,
        metavar="K",
        help="also report K-examples-per-class accuracy (fixed default params)",
    )
    p.add_argument("--draws", type=positive_int, default=5, help="few-shot draws (default: 5)")
    p.add_argument(
        "--out",
        type=Path,
        help="also write the results as JSON here (default: the table on standard output only)",
    )
    p.add_argument(
        "--save-dir",
        type=Path,
        help="save each fitted head (+ a JSON sidecar) here, for `featpipe predict` (default: "
        "heads are not saved)",
    )
    p.add_argument(
        "--save-format",
        choices=["skops", "joblib"],
        help="file format of saved heads: skops (safe to load; the default when skops is "
        "installed) or joblib (a pickle)",
    )
    p.add_argument(
        "--run-dir",
        type=Path,
        help="also append a result row per head to DIR/results.jsonl (the rows `featpipe run` "
        "writes), for `featpipe report DIR`",
    )
    add_force_option(p, "--out, and heads in --save-dir saved from another store or layer,")
    p.set_defaults(func=run_probe)

    q = subparsers.add_parser(
        "predict",
        help="predict with a saved head on a store or on image files",
        description="Predict classes with a head saved by `featpipe probe --save-dir`.",
        epilog=PREDICT_EXAMPLES,
        formatter_class=fmt,
    )
    q.add_argument(
        "head",
        metavar="HEAD",
        type=Path,
        help="saved head (.skops or .joblib) with its .json sidecar",
    )
    q.add_argument(
        "inputs", metavar="INPUT", nargs="+", help="one feature store (.h5), or image files/folders"
    )
    q.add_argument(
        "--split",
        choices=["train", "val", "test"],
        help="with a store: predict only this split (default: all rows)",
    )
    q.add_argument(
        "--batch-size",
        type=positive_int,
        default=32,
        help="images per forward pass (default: 32)",
    )
    q.add_argument(
        "--device",
        default="auto",
        help="auto, cpu, cuda or cuda:N (images only; default: %(default)s)",
    )
    q.add_argument(
        "--on-error",
        choices=["fail", "skip"],
        default="fail",
        help="an image that cannot be read, or whose features are NaN or infinite: stop with "
        "its name (fail, the default), or leave it out of the predictions with a warning "
        "naming it (skip), as a store extracted with --on-error skip leaves it out",
    )
    q.add_argument(
        "--out",
        type=Path,
        help="file to write: JSON where it ends in .json, else CSV (default: CSV on standard "
        "output); the columns are listed below",
    )
    add_force_option(q)
    q.set_defaults(func=run_predict)


def run_probe(args: argparse.Namespace) -> int:
    from featpipe.device import resolve_device
    from featpipe.distributed import current_ranks
    from featpipe.evaluate import measure
    from featpipe.heads import few_shot, save_head, select_and_fit
    from featpipe.heads.fewshot import require_k_per_class, require_test_split, splits_with_rows
    from featpipe.heads.splits import FeatureSplits, layer_parts
    from featpipe.report import RESULTS_FILE
    from featpipe.store import FeatureStore
    from featpipe.store.writer import check_out_file

    # Written after every head is fitted: a path that cannot be written is refused first.
    if args.out:
        store_input = [("feature store", args.store)]
        check_out_file(
            args.out, option="--out", replace=args.force, example="results.json",
            inputs=store_input,
        )  # fmt: skip
    for option, folder in (("--save-dir", args.save_dir), ("--run-dir", args.run_dir)):
        _check_folder(folder, option)
    store = FeatureStore(args.store)
    layer = pick_layer(store, args.layer)
    if args.save_dir and len(layer_parts(layer)) > 1:
        raise ConfigError(
            f"--save-dir cannot save a head on concatenated layers ({layer!r}) yet: `featpipe "
            "predict` would need their train statistics. Save heads fitted on one layer."
        )
    names = _head_names(args.heads)
    data = FeatureSplits(store, layer)
    if args.cv is not None and data.has("val"):  # else it would be accepted and ignored
        raise ConfigError(
            f"--cv {args.cv} sets the cross-validation folds used on a store without a val "
            f"split, but {store.path} has {store.split_counts()['val']} val rows, on which "
            "each head's settings are chosen. Leave --cv out."
        )
    if args.run_dir and not data.has("test"):  # rows are test results
        raise ConfigError(
            f"--run-dir records each head's test results, but {store.path} has no test rows "
            f"(it has: {', '.join(splits_with_rows(data)) or 'none'}). Leave --run-dir out, or "
            "extract the store with a test split."
        )
    if args.few_shot:  # so do a missing test split and too few rows of a class
        require_test_split(data)
        require_k_per_class(data, args.few_shot)
    suffix = _save_suffix(args.save_format) if args.save_dir else None
    if args.save_dir and not args.force:
        _keep_other_heads([args.save_dir / f"{n}{suffix}" for n in names], store, layer)
    rows, report = (
        [],
        {
            "store": str(store.path),
            "store_key": store.key,
            "layer": layer,
            "split_counts": store.split_counts(),
            "heads": [],
        },
    )
    device = str(resolve_device(args.device))
    # Under torchrun every rank fits (streamed heads share their passes); rank 0 writes.
    main = current_ranks().is_main
    recorded = 0
    for name in names:
        try:
            with measure(device) as usage:
                result = select_and_fit(
                    name, store, layer, cv=_cv(args), seed=args.seed, device=args.device,
                    progress=True,
                )  # fmt: skip
            entry = result.summary()
            if args.few_shot:
                fs = few_shot(
                    name, store, layer, args.few_shot, draws=args.draws, seed=args.seed,
                    head_seed=args.seed, device=args.device,
                )  # fmt: skip
                entry["few_shot"] = fs.summary()
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: say what the heads before kept
            stop = Interrupted.from_exception(exc)
            raise stop.with_message(_interrupted_text(args, name, report["heads"])) from None
        if args.save_dir and main:
            path = save_head(
                result.estimator,
                args.save_dir / f"{name}{suffix}",
                store=store,
                layer=layer,
                selection=result,
            )
            entry["saved"] = str(path)
        if args.run_dir and main:  # each head's row as it finishes: Ctrl-C keeps them
            _record(args, store, layer, device, result, usage)
            recorded += 1
        report["heads"].append(entry)
        rows.append(_row(entry))
    if not main:
        return 0
    _print_table(rows, few_shot=bool(args.few_shot))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    if args.run_dir:
        print(f"appended {counted(recorded, 'row')} to {args.run_dir / RESULTS_FILE}")
    return 0


def _cv(args: argparse.Namespace) -> int:
    """The folds ``--cv`` asks for, or the default."""
    return CV_FOLDS if args.cv is None else args.cv


def _interrupted_text(args: argparse.Namespace, name: str, done: list[dict]) -> str:
    """What an interruption during head ``name`` kept of the heads before it."""
    from featpipe.report import RESULTS_FILE

    if not done:
        return f"interrupted while fitting {name}; no head finished"
    names = ", ".join(entry["head"] for entry in done)
    kept = [f"their rows in {args.run_dir / RESULTS_FILE}"] if args.run_dir else []
    kept += [f"their heads in {args.save_dir}"] if args.save_dir else []
    where = f" ({'; '.join(kept)})" if kept else ""
    out = f"; {args.out} not written" if args.out else ""
    return (
        f"interrupted while fitting {name}; finished: {names}{where}{out}. Run again with "
        f"--heads for the heads left"
    )


def _check_folder(path: Path | None, option: str) -> None:
    """Refuse a folder option that names a file (the folder is made when missing)."""
    from featpipe.store.writer import file_in_the_way

    at = file_in_the_way(path) if path else None
    if at is not None:
        raise ConfigError(
            f"{option} {path}: {at} is a file, not a folder. Give a folder (it is created "
            "when missing)."
        )


def _keep_other_heads(paths: list[Path], store, layer: str) -> None:
    """Refuse to replace a saved head that a re-run would not save again: one fitted on
    another store or layer (or whose sidecar cannot tell). The same store's and layer's head
    is replaced, so probing again, or the heads an interrupted run left, just works."""
    from featpipe.heads.persistence import read_sidecar

    for path in paths:
        if not path.exists():
            continue
        try:
            sidecar = read_sidecar(path)
        except ConfigError:
            sidecar, saved = {}, "a sidecar that cannot be read"
        else:
            saved = _saved_from(sidecar, store, layer)
        if (sidecar.get("store_key"), sidecar.get("layer")) != (store.key, layer):
            raise ConfigError(
                f"--save-dir: {path} holds a head saved from {saved}; saving here would "
                "replace it. Give another --save-dir, or pass --force to replace it."
            )


def _saved_from(sidecar: dict, store, layer: str) -> str:
    """Where the head ``sidecar`` describes came from, with what differs from ``store``'s
    ``layer``: the same file extracted again since shows as its store keys, the path alone
    being the same."""
    was, now = [f"store {sidecar.get('store_path')}"], []
    if sidecar.get("store_key") != store.key:
        if Path(str(sidecar.get("store_path"))).resolve() == Path(store.path).resolve():
            was[0] += (
                f" before it was extracted again (store key {sidecar.get('store_key')}, now "
                f"{store.key})"
            )
        else:
            now.append(f"this store {store.path}")
    if sidecar.get("layer") != layer:
        was.append(f"layer {sidecar.get('layer')}")
        now.append(f"layer {layer}")
    return ", ".join(was) + (f", not from {', '.join(now)}" if now else "")


def _head_names(text: str) -> list[str]:
    """The heads ``--heads`` names, checked before any training: unknown, repeated or no
    names are refused (an empty list ran nothing and exited 0)."""
    from featpipe.heads.registry import list_heads, make_head

    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ConfigError(f"--heads {text!r} names no head; valid: {', '.join(list_heads())}.")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(
            f"--heads names {', '.join(twice)} more than once ({text!r}); each head is fitted "
            "once per run: name it once."
        )
    for name in names:
        make_head(name)  # an unknown name is a ConfigError naming the valid ones
    return names


def _record(args: argparse.Namespace, store, layer: str, device: str, result, usage) -> None:
    """Append one head's result row to ``--run-dir``'s results.jsonl (as `featpipe run`)."""
    from featpipe.pipeline.stages.probe import store_row
    from featpipe.report import record_rows

    row = store_row(
        store, layer, result, usage, seed=args.seed, cv=_cv(args), device=device,
        run=args.run_dir.name,
    )  # fmt: skip
    record_rows(args.run_dir, [row])


def _save_suffix(choice: str | None) -> str:
    """The file suffix of saved heads: skops when asked for or installed, else joblib."""
    import importlib.util

    if choice == "joblib":
        return ".joblib"
    if choice is None and importlib.util.find_spec("skops") is None:
        warnings.warn(
            'Saving heads with joblib (pickles): pip install "featpipe[skops]" to save .skops '
            "files, which load without running code.",
            UserWarning,
            stacklevel=2,
        )
        return ".joblib"
    return ".skops"  # save_head names the extra if skops is missing


def _row(entry: dict) -> list[str]:
    params = ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in entry["params"].items()
    )
    test = entry["test_accuracy"]
    row = [
        entry["head"],
        params,
        f"{entry['val_accuracy']:.4f}",
        "-" if test is None else f"{test:.4f}",
        f"{entry['select_seconds']:.2f}",
        f"{entry['fit_seconds']:.2f}",
    ]
    if "few_shot" in entry:
        fs = entry["few_shot"]
        spread = "(1 draw)" if fs["std"] is None else f"± {fs['std']:.4f}"
        row.append(f"{fs['mean']:.4f} {spread}")
    return row


def _print_table(rows: list[list[str]], few_shot: bool) -> None:
    # results.jsonl and the report count both columns as the head's fit cost
    header = ["head", "chosen", "val acc", "test acc", "search s", "refit s"]
    header += ["few-shot"] if few_shot else []
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _image_files(inputs: list[str]) -> list[Path]:
    """The images ``inputs`` name, in their order; a folder's as an image folder lists them
    (hidden files and folders such as macOS's ._x.jpg forks left out), sorted."""
    from featpipe.data.folder import IMAGE_EXTENSIONS
    from featpipe.data.folder import _image_files as images_under

    files, left_out = [], []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            files += sorted(images_under(path, IMAGE_EXTENSIONS, left_out))
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(
                f"{path} does not exist: give image files, folders of images or one feature "
                "store (.h5)."
            )
    if left_out:  # other photos (.heic, ...) and partial downloads: say so, as a folder does
        counts = Counter(f.suffix.lower() for f in left_out)
        said = ", ".join(f"{n} {suffix}" for suffix, n in sorted(counts.items()))
        warnings.warn(
            f"predict leaves out {counted(len(left_out), 'file')} in the folders given "
            f"({said}; the first: {sorted(left_out)[0]}): featpipe reads "
            f"{', '.join(IMAGE_EXTENSIONS)}. Convert other photos (e.g. to .jpg or .png) to "
            "predict them; finish or repeat partial downloads (.part, .crdownload, ...).",
            UserWarning,
            stacklevel=2,
        )
    if not files:
        raise ConfigError(f"No images found in {', '.join(inputs)}.")
    return files


def _is_store(inputs: list[str]) -> bool:
    """Whether ``inputs`` is one feature store; a store among several inputs is refused (it
    was read as an image: 'cannot decode ... save it again as PNG or JPEG')."""
    stores = [text for text in inputs if Path(text).suffix.lower() in STORE_SUFFIXES]
    if stores and len(inputs) > 1:
        raise ConfigError(
            f"featpipe predict reads one feature store, or image files and folders; got "
            f"{len(inputs)} inputs with the {agrees(len(stores), 'store', 'stores')} "
            f"{', '.join(stores)}. Predict on one store at a time."
        )
    return bool(stores)


def run_predict(args: argparse.Namespace) -> int:
    from featpipe.heads import check_head_matches, load_head
    from featpipe.store.writer import check_out_file

    if args.out:  # before the inputs are read and embedded
        from featpipe.heads.persistence import sidecar_path

        inputs = [("head", args.head), ("head's sidecar", sidecar_path(args.head))]
        inputs += [
            ("feature store" if Path(t).suffix.lower() in STORE_SUFFIXES else "image", Path(t))
            for t in args.inputs
        ]
        check_out_file(
            args.out, option="--out", replace=args.force, example="predictions.csv",
            inputs=inputs,
        )  # fmt: skip
    _check_head_path(args.head)
    head, sidecar = load_head(args.head)
    layer = sidecar.get("layer")
    if _is_store(args.inputs):
        from featpipe.store import FeatureStore

        store = FeatureStore(args.inputs[0])
        check_head_matches(sidecar, store, layer)
        if args.split:
            _require_split(store, args.split)
        X, _ = store.arrays(layer, args.split)
        ids = store.ids(args.split)
    else:
        if args.split:  # it was ignored: every image was predicted
            raise ConfigError(
                f"--split {args.split} selects rows of a feature store; images have no split. "
                "Leave --split out, or give the store."
            )
        files = _image_files(args.inputs)
        X, files = _embed(files, sidecar, args)
        ids = [str(f) for f in files]
    pred = head.predict(X)
    proba = head.predict_proba(X) if hasattr(head, "predict_proba") else None
    names = sidecar.get("classes") or []

    def class_name(label):
        name = names[int(label)] if isinstance(label, (int, np.integer)) and names else label
        return name.item() if isinstance(name, np.generic) else name  # JSON's int, not "3"

    # The predicted class's probability stays third, so readers of the three columns still
    # work; one column per class the head knows follows, in the head's class order.
    fields = PREDICTION_FIELDS + (
        [] if proba is None else [f"probability_{class_name(c)}" for c in head.classes_]
    )
    _warn_unseen_classes(args.head, [class_name(c) for c in head.classes_], names)
    rows = []
    for i, (sid, label) in enumerate(zip(ids, pred, strict=True)):
        if proba is None:
            rows.append([sid, class_name(label), None])
            continue
        rounded = [round(float(p), 6) for p in proba[i]]
        rows.append([sid, class_name(label), max(rounded), *rounded])
    if not args.out:
        _write_csv(sys.stdout, fields, rows)
        return 0
    from featpipe.atomic import replace_with

    args.out.parent.mkdir(parents=True, exist_ok=True)
    replace_with(args.out, lambda tmp: _write_rows(tmp, fields, rows))
    print(f"wrote {counted(len(ids), 'prediction')} to {args.out}", file=sys.stderr)
    return 0


PREDICTION_FIELDS = ["id", "predicted_class", "probability"]
UNSEEN_SHOWN = 10  # classes named in the warning of those a head never saw


def _warn_unseen_classes(head: Path, known: list, classes: list) -> None:
    """Warn of the store's classes the head never saw (no train rows): it cannot predict them,
    and they get no probability column (a column of zeros would read as a measured 0)."""
    unseen = [str(c) for c in classes if c not in known]
    if unseen:  # named, not the known ones: a 1000-class head missing one listed 999
        warnings.warn(
            f"{head} knows {len(known)} of the {len(classes)} classes of its store; it never "
            f"predicts {listed(unseen, UNSEEN_SHOWN)}, "
            "which had no rows to fit on, and the output has no probability column for them. "
            "Extract a store with train images of every class to predict them.",
            UserWarning,
            stacklevel=2,
        )


def _write_rows(path: Path, fields: list[str], rows: list[list]) -> None:
    """``rows`` as a JSON list of objects where ``path`` ends in .json, else as CSV."""
    if path.suffix.lower() == ".json":
        records = [dict(zip(fields, row, strict=True)) for row in rows]
        path.write_text(json.dumps(records, indent=1, default=str) + "\n")
        return
    with open(path, "w", newline="") as out:
        _write_csv(out, fields, rows)


def _write_csv(out, fields: list[str], rows: list[list]) -> None:
    writer = csv.writer(out)
    writer.writerow(fields)
    for sid, name, *probs in rows:
        writer.writerow([sid, name, *("" if p is None else f"{p:.6f}" for p in probs)])


def _check_head_path(path: Path) -> None:
    """Refuse a store or a folder given as HEAD, saying what to give (load_head would say
    that '<path>.json' is missing)."""
    if path.suffix.lower() in STORE_SUFFIXES:
        raise ConfigError(
            f"featpipe predict HEAD STORE takes a saved head first; got the feature store {path} "
            "as HEAD. Give the head saved by `featpipe probe --save-dir DIR` (DIR/logreg.skops) "
            "first, then the store or images."
        )
    if path.is_dir():
        from featpipe.heads.persistence import saved_heads

        heads = saved_heads(path)
        found = f"it holds {', '.join(heads)}" if heads else "it holds no saved head"
        raise ConfigError(
            f"HEAD {path} is a folder ({found}); give one saved head file, e.g. "
            f"{path / (heads[0] if heads else 'logreg.skops')}."
        )


def _require_split(store, split: str) -> None:
    """A clean error, naming the splits there are, for a split with no rows."""
    if store.split_counts().get(split, 0) == 0:
        have = [name for name, n in store.split_counts().items() if n > 0]
        raise ConfigError(
            f"{store.path} has no rows in split {split!r} (it has: {', '.join(have) or 'none'}). "
            "Pass one of those to --split, or leave --split out to predict every row."
        )


def _embed(
    files: list[Path], sidecar: dict, args: argparse.Namespace
) -> tuple[np.ndarray, list[Path]]:
    """(the head's features of ``files``, the files they are of): as its store holds them,
    the same backbone, weights, preprocessing and layer, rounded to the store's dtype. With
    --on-error skip, images that fail are left out."""
    from featpipe.heads import Embedder
    from featpipe.heads.persistence import check_backbone_matches, warn_other_compute

    backbone = sidecar.get("backbone") or {}
    if not backbone.get("spec"):
        raise ConfigError(
            f"{args.head} was saved without a store, so its sidecar names no backbone; predict "
            "on a feature store instead."
        )
    size = (backbone.get("preprocessing") or {}).get("crop")
    emb = Embedder(
        backbone["spec"],
        layer=sidecar["layer"],
        image_size=size,
        batch_size=args.batch_size,
        device=args.device,
        decode=_store_decode(sidecar, args),
        # rounded as the head's store holds them, for the store's predictions
        dtype=(sidecar.get("features") or {}).get("dtype") or "float32",
    ).fit()
    check_backbone_matches(sidecar, emb.backbone_identity_)
    # the store's features cannot be computed here as it computed them (another precision,
    # nvJPEG's decode, a model of another dtype): predictions then differ a little
    warn_other_compute(sidecar, emb.compute_, "these images are")
    if args.on_error == "skip":
        X, files = _embed_skipping(emb, files)
    else:
        X = emb.transform([str(f) for f in files])
    return X, files


def _embed_skipping(emb, files: list[Path]) -> tuple[np.ndarray, list[Path]]:
    """``emb``'s features of the ``files`` it can compute, batch by batch, and those files;
    a batch that fails is computed image by image, and the images that fail are warned of."""
    from featpipe.errors import ImageReadError
    from featpipe.store.reader import named_rows

    failed = (ImageReadError, NonFiniteFeaturesError)
    feats, kept, skipped, first = [], [], [], None
    step = int(emb.batch_size)
    for batch in (files[start : start + step] for start in range(0, len(files), step)):
        try:
            feats.append(emb.transform([str(f) for f in batch]))
            kept += batch
            continue
        except failed:
            pass
        for file in batch:
            try:
                feats.append(emb.transform([str(file)]))
                kept.append(file)
            except failed as err:
                skipped.append(file)
                first = first or err
    if not kept:
        raise ConfigError(f"--on-error skip left out all {len(files)} images; the first: {first}")
    if skipped:
        warnings.warn(
            f"--on-error skip left out {len(skipped)} of {len(files)} images "
            f"({named_rows(skipped, len(skipped))}); the first: {first}",
            UserWarning,
            stacklevel=2,
        )
    return np.concatenate(feats), kept


def _store_decode(sidecar: dict, args: argparse.Namespace) -> str:
    """The ``decode`` that gives images the pixels the head's store had (``fast`` for a
    ``--decode fast`` store). Warns where the sidecar does not say how (saved before it was
    recorded): predictions then differ a little from the store's."""
    if "compute" not in sidecar:
        warnings.warn(
            f"{args.head}'s sidecar (format version {sidecar.get('format_version')}) does not "
            "record how its store decoded images, so they are decoded exactly: if the store was "
            "extracted with --decode fast, probabilities differ a little from the store's. Save "
            "the head again with this featpipe to record it.",
            UserWarning,
            stacklevel=2,
        )
        return "exact"
    saved = sidecar["compute"]
    if not isinstance(saved, dict):  # a store made before featpipe recorded it: exact, fp32
        return "exact"
    return "fast" if saved.get("decode") == "pil-fast" else "exact"
