"""``featpipe finetune``: fine-tune a backbone with a new head on an image set."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import time
from datetime import datetime
from pathlib import Path

from featpipe.atomic import write_text_atomic
from featpipe.cli.options import (
    add_decode_option,
    add_image_size_option,
    add_limit_options,
    apply_limits,
)
from featpipe.errors import ConfigError, MissingExtraError, UnknownNameError
from featpipe.interrupt import Interrupted

EPILOG = """\
examples:
  featpipe finetune --data digits --backbone efficientnet_lite0 --mode lpft --image-size 64
  featpipe finetune --data cifar10/ --limit-train 5000 --limit-test 1000 --image-size 96 \\
      --mode full --epochs 4 --run-dir runs/c10-full
  featpipe finetune --data data/pets --mode partial:3 --optimizer adamw --lr 1e-3
  featpipe finetune --data digits --image-size 64 --epochs 3 \\
      --grid lr=0.01,0.05 --grid weight_decay=0,1e-4      # 4 runs, the best on val tested
  featpipe finetune --data digits --image-size 64 --mode scratch   # the from-scratch baseline

Modes: full, partial:N (stages 0 to N-1 frozen, stage 0 being the stem; see `featpipe layers
SPEC`), bn (batch norm frozen), head (only the new head trains), lpft (logistic-regression probe,
then full training), scratch (the same architecture from random initialisation: the baseline).
--grid KEY=V1,V2 (repeatable) trains every combination of the listed settings (lr, weight_decay,
dropout, ...), keeps the one with the best validation accuracy and tests only that one. Values
read as the flags read them (lr=.05,1e-3; patience=3,0 where 0 is no early stopping, as
--patience 0); every combination is checked before the first trains.
Run again with the same --run-dir and arguments to resume an interrupted run.
Under torchrun (`torchrun --nproc-per-node N -m featpipe finetune ...`) every process trains a
replica (DistributedDataParallel); --batch-size stays the global batch, and rank 0 writes the
run folder.
"""


def probe_c(text: str) -> float | str:
    """``--probe-C``: ``auto``, or a positive number."""
    try:
        value = text if text == "auto" else float(text)
    except ValueError:
        value = None
    if value is None or (value != "auto" and not (math.isfinite(value) and value > 0)):
        raise argparse.ArgumentTypeError(
            f"must be auto (chosen on val) or a positive number, e.g. 1.0; got {text!r}"
        )
    return value


def max_grad_norm(text: str) -> float | str | None:
    """``--max-grad-norm``: ``auto``, ``none`` (or 0), or a positive number."""
    if text in ("auto", "none"):
        return None if text == "none" else text
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(
            f"must be auto (LP-FT capped at 10, other modes not), none (or 0) or a positive "
            f"number, e.g. 5; got {text!r}"
        )
    return value


# Recipe options: (flag, type, help); defaults come from FineTuner so the two never drift.
RECIPE = (
    ("--mode", str, "full, partial:N, bn, head, lpft or scratch"),
    ("--epochs", int, "most epochs (early stopping may end sooner)"),
    ("--batch-size", int, "training images per step"),
    ("--lr", float, "learning rate of the new head"),
    ("--backbone-lr-scale", float, "backbone learning rate = lr x this"),
    ("--optimizer", str, "sgd (momentum, Nesterov) or adamw"),
    ("--momentum", float, "SGD momentum"),
    ("--weight-decay", float, "weight decay (never on biases or norm parameters)"),
    ("--warmup-epochs", float, "linear warm-up before the cosine decay, in epochs"),
    ("--label-smoothing", float, "label smoothing of the training loss"),
    (
        "--max-grad-norm",
        max_grad_norm,
        "cap on the gradient's global norm per step: auto (LP-FT 10, other modes none), none "
        "or a number",
    ),
    ("--loss", str, "cross_entropy, or mse (squared error of softmax vs one-hot)"),
    ("--dropout", float, "dropout in front of the new head"),
    ("--augment", str, "standard (random resized crop + flip) or none"),
    ("--patience", int, "epochs without a better val score before stopping; 0: never stop"),
    ("--probe-C", probe_c, "C of the LP-FT probe, or auto (chosen on val)"),
    ("--val-fraction", float, "share of train used as val when the source has none"),
    ("--seed", int, "seed of subsampling, val carving, initialisation and shuffling"),
    ("--device", str, "auto, cpu, cuda or cuda:N"),
    ("--workers", int, "DataLoader worker processes (0: the main process)"),
)


def register(subparsers) -> None:
    from featpipe.finetune import FineTuner

    defaults = FineTuner().get_params()
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune a backbone with a new linear head",
        description="Fine-tune a backbone with a new linear head on an image set, choose the "
        "epoch on\nvalidation, and report validation and test metrics (in --run-dir).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--data",
        required=True,
        metavar="SOURCE",
        help="built-in dataset (digits), image folder, CSV manifest, torchvision:NAME@ROOT, "
        "hf-dataset:PATH[?image=COL&label=COL] or wds:SHARDS (tar shards, e.g. "
        "/data/shards-{000000..000099}.tar)",
    )
    p.add_argument(
        "--backbone",
        default=defaults["backbone"],
        help="backbone spec (default: %(default)s; see `featpipe backbones`)",
    )
    add_image_size_option(p)
    add_decode_option(p)
    recipe = p.add_argument_group("recipe")
    for flag, kind, text in RECIPE:
        name = flag[2:].replace("-", "_")
        recipe.add_argument(
            flag, type=kind, default=defaults[name], help=f"{text} (default: %(default)s)"
        )
    recipe.add_argument(
        "--sync-bn",
        action="store_true",
        help="under torchrun on GPUs: batch norm statistics over the global batch",
    )
    recipe.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="search a setting (repeatable): every combination trains, the best on val is tested",
    )
    add_limit_options(p)
    p.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="run folder (default: runs/finetune-<backbone>-<mode>-<time>); with a test split "
        "the result row is appended to its results.jsonl, for `featpipe report DIR`",
    )
    p.add_argument(
        "--no-resume",
        action="store_true",
        help="start over even if the run folder holds a checkpoint",
    )
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars within epochs (epoch lines stay)",
    )
    p.set_defaults(func=run_finetune)


def _source(args: argparse.Namespace):
    from featpipe.data import open_source

    return apply_limits(open_source(args.data), args, seed=args.seed)


def _check_backbone(backbone: str, mode: str) -> None:
    """Refuse an unknown backbone, or a mode its stages cannot give (``partial:99``), before
    the source is opened and scanned. Builds the architecture only (random weights): the
    names and stages are the weights', at no download or load."""
    from featpipe.backbones import get_backbone
    from featpipe.finetune.freezing import Mode, frozen_by
    from featpipe.finetune.tuner import spec_for

    try:
        built = get_backbone(spec_for(backbone, Mode.parse("scratch")))
    except (UnknownNameError, MissingExtraError):
        raise
    except Exception:  # a model that cannot be built without its weights: the fit checks it
        return
    frozen_by(built.model, Mode.parse(mode), built.stages, built.classifier or "")


def _run_dir(args: argparse.Namespace) -> Path:
    if args.run_dir is not None:
        return args.run_dir
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"{args.backbone}-{args.mode}".replace(":", "_").replace("/", "_")
    return Path("runs") / f"finetune-{name}-{stamp}"


def parse_grid(items: list[str]) -> dict[str, list]:
    """``["lr=0.01,0.05", "augment=none,standard"]`` -> ``{"lr": [0.01, 0.05], ...}``: each
    value read as TOML (a number, a boolean), else as a number the flags accept (``.05``),
    or else as a string; ``patience`` 0 is None (no early stopping), as ``--patience 0``."""
    from featpipe.finetune.search import check_grid

    grid, grid_items = {}, {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not values or not key:
            raise ConfigError(f"--grid needs KEY=V1,V2,...; got {item!r}.")
        if key in grid:  # the later one would replace the earlier: a candidate lost silently
            raise ConfigError(
                f"--grid {key} is given twice ({grid_items[key]!r}, {item!r}); give each "
                f"setting once, with all its values: --grid {key}=V1,V2,..."
            )
        grid_items[key] = item
        grid[key] = [_grid_value(key, v.strip()) for v in values.split(",")]
    check_grid(grid, "--grid")
    return grid


def _grid_value(key: str, text: str):
    from featpipe.pipeline.config import parse_override

    value = parse_override(f"v={text}")[1]
    if isinstance(value, str):  # not TOML; perhaps a number as --lr reads it (.05, 5.)
        for number in (int, float):
            try:
                return number(text)
            except ValueError:
                pass
    if key == "patience" and value == 0 and not isinstance(value, bool):
        return None
    return value


def _record(
    tuner, proba, usage, test_seconds: float, run_dir: Path, args: argparse.Namespace, search
):
    """Append the run's result row to run_dir/results.jsonl (what `featpipe run` writes)."""
    from featpipe.pipeline.stages.finetune import tuner_row
    from featpipe.report import record_rows

    limits = {s: getattr(args, f"limit_{s}") for s in ("train", "val", "test")}
    row = tuner_row(
        tuner, proba, usage, test_seconds, run=run_dir.name, limits=limits, search=search
    )
    record_rows(run_dir, [row])
    return row


def _shown_counts(source, counts: dict, args: argparse.Namespace) -> str:
    """The split counts training uses: a source without val rows has val carved from train
    (``--val-fraction``), so its counts as the source has them would show val 0."""
    from featpipe.finetune.data import split_rows

    if counts.get("val") or not counts.get("train"):
        return str(counts)
    train, val, _ = split_rows(source, args.val_fraction, args.seed)
    shown = {**counts, "train": len(train), "val": len(val)}
    return f"{shown} (val carved from train: --val-fraction {args.val_fraction:g})"


def _remove_if_empty(made: list[Path]) -> None:
    """Remove the folders this command made (``missing_folders``) if left empty."""
    for folder in made:
        with contextlib.suppress(OSError):
            folder.rmdir()  # only an empty folder goes


def run_finetune(args: argparse.Namespace) -> int:
    from featpipe.device import resolve_device
    from featpipe.distributed import process_group

    # Under torchrun the whole command runs in the job's process group (fit, then the test
    # predictions, shared among the ranks); elsewhere this is a plain run.
    with process_group(resolve_device(args.device)):
        return _finetune(args)


def _finetune(args: argparse.Namespace) -> int:
    from featpipe.device import resolve_device
    from featpipe.evaluate import measure
    from featpipe.finetune import FineTuner, ddp
    from featpipe.finetune.callbacks import WriteJson
    from featpipe.finetune.search import check_candidates, fit_grid
    from featpipe.finetune.tuner import missing_folders

    grid = parse_grid(args.grid)
    params = {name: getattr(args, name) for name in (f[2:].replace("-", "_") for f, _, _ in RECIPE)}
    params["patience"] = params["patience"] or None
    params |= {
        "image_size": args.image_size,
        "decode": args.decode,
        "resume": not args.no_resume,
        "verbose": 1 if args.no_progress else 2,
        "sync_bn": args.sync_bn,
    }
    # Bad settings, and any grid combination's, fail before the data is opened (in flags:
    # featpipe.cli.as_flags).
    check_candidates(FineTuner(args.backbone, **params), grid, "--grid")
    if args.limit_train == 0:  # else "no train split" later, the cause unnamed
        raise ConfigError(
            "--limit-train 0 leaves no images to train on: give a number above 0, or leave "
            "the option out to train on the whole train split."
        )
    # As a pipeline refuses it: no epoch reports the untrained network as a fine-tune.
    given = [f"--epochs {args.epochs}"] if args.epochs < 1 else []
    given += [f"--grid epochs={v}" for v in grid.get("epochs", []) if v < 1]
    if given:
        raise ConfigError(
            f"{given[0]} trains no epoch: the untrained network would be reported as a "
            "fine-tune. Give 1 or more (`featpipe probe` fits heads on frozen features)."
        )
    _check_backbone(args.backbone, args.mode)
    source = _source(args)
    run_dir = ddp.from_main(_run_dir(args))  # one folder, named by rank 0's clock
    main = ddp.is_main()  # rank 0 prints and writes the run folder
    made: list[Path] = []
    tuner = FineTuner(args.backbone, run_dir=run_dir, **params)
    counts = source.split_counts()
    if main:
        world = f" on {ddp.world_size()} ranks" if ddp.active() else ""
        print(
            f"{args.backbone} mode={args.mode} on {len(source)} images "
            f"{_shown_counts(source, counts, args)}{world}; run: {run_dir}"
        )
        made = missing_folders(run_dir)  # removed again if left empty
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a file of that name, a read-only folder
            raise ConfigError(
                f"Cannot make the run folder {run_dir} ({exc.strerror or exc}): give --run-dir "
                "a folder you can write to."
            ) from None
        config = {
            **tuner.get_params(),
            "run_dir": str(run_dir),
            "data": str(args.data),
            "grid": grid,
            "limits": {s: getattr(args, f"limit_{s}") for s in ("train", "val", "test")},
        }
        # Written once training starts: a resume the checkpoint refuses (other settings)
        # leaves the folder's, which describes its checkpoint and results.
        tuner.set_params(callbacks=[WriteJson(run_dir / "config.json", config)])

    # The default folder has the time in its name: resuming needs it named.
    again = "the same command" + ("" if args.run_dir else f" with --run-dir {run_dir}")
    with measure(str(resolve_device(args.device))) as usage:
        search = None
        try:
            if grid:  # an interrupted grid says which candidate stopped, and `again`
                search = fit_grid(tuner, source, grid, command=again)
                tuner = search.best
            else:
                tuner.fit(source)
        except Interrupted as exc:
            _remove_if_empty(made)
            if args.run_dir is None and not grid:
                raise exc.with_message(tuner.interrupted_message(again)) from None
            raise
        except BaseException:
            _remove_if_empty(made)  # a fit refused before training (the mode, the backbone)
            raise
        if counts["test"]:  # the one look at test, after selection
            start = time.perf_counter()
            proba = tuner.predict_proba("test")
            test_seconds = time.perf_counter() - start
    fit_seconds = tuner.fit_seconds_  # every resumed piece of the run, not only this one
    best = tuner.history_[tuner.best_epoch_]
    metrics = {
        "mode": args.mode,
        "backbone": args.backbone,
        "best_epoch": tuner.best_epoch_,
        "epochs_run": tuner.history_[-1]["epoch"],
        "val_accuracy": best["val_accuracy"],
        "val_loss": best["val_loss"],
        "fit_seconds": fit_seconds,
        # Each resumed piece's seconds times its processes (pieces may differ in number).
        "fit_process_seconds": tuner.fit_process_seconds_,
        "trainable_params": tuner.trainable_params_,
        "probe": tuner.probe_,
        "world_size": tuner.world_size_,
    }
    if search is not None:
        metrics["grid"] = [{"params": p, "val_accuracy": v} for p, v in search.curve]
        metrics["chosen"] = search.params
        metrics["fit_seconds"] = fit_seconds = search.fit_seconds
        metrics["fit_process_seconds"] = search.fit_process_seconds
    if not main:
        return 0
    if counts["test"]:
        row = _record(tuner, proba, usage, test_seconds, run_dir, args, search)
        metrics["test"] = row.metrics
        metrics["test_seconds"] = test_seconds
    write_text_atomic(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")

    if search is not None:
        chosen = ", ".join(f"{k}={v}" for k, v in search.params.items())
        print(f"grid: {len(search.curve)} settings, chosen on val: {chosen}")
    print(f"val accuracy {100 * metrics['val_accuracy']:.2f}% (epoch {tuner.best_epoch_})", end="")
    if "test" in metrics:
        t = metrics["test"]
        lo, hi = t["ci"].get("top1", (float("nan"),) * 2)
        print(
            f", test accuracy {100 * t['top1']:.2f}% (95% CI {100 * lo:.1f}-{100 * hi:.1f})", end=""
        )
    print(f"; fit {fit_seconds:.1f} s; results in {run_dir}")
    return 0
