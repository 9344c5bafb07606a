"""``featpipe run`` (a declared experiment end to end) and ``featpipe report`` (rebuild reports)."""

from __future__ import annotations

import argparse

from featpipe.data.unreadable import ON_ERROR

RUN_EPILOG = """\
examples:
  featpipe run pipelines/demo.toml
  featpipe run pipelines/cifar10_cpu.toml --data /tmp/cifar10 --out runs/c10
  featpipe run pipelines/demo.toml --set finetune.epochs=1 --set 'probes.heads=["logreg"]'

Every backbone, layer, head grid value and fine-tuning mode is checked before anything is
computed. Running the same file again skips every method already in OUT/results.jsonl with the
same settings ("reusing finished ...") and reuses cached feature stores, so an interrupted run
(Ctrl-C, SIGTERM, or a crash) resumes where it stopped. OUT/plan.json lists the rows of the
current configuration: reports use only those; rows of earlier configurations stay in
results.jsonl as history. A second run into the same OUT waits for the first, then reuses its
rows. Relative paths in the file (source.data, out, features.cache_dir) are read from the
working directory, not from the file's folder; ~ and $VAR in them are expanded.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "run",
        help="run a declared experiment (pipelines/*.toml) and write its report",
        description="Extract features, fit every head, fine-tune, evaluate all methods on the "
        "same test\nimages, and write results.jsonl, report.md and report.html in the run "
        "folder (--out).",
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("pipeline", metavar="FILE", nargs="?", help="pipeline TOML file")
    p.add_argument(
        "--schema",
        action="store_true",
        help="print the JSON Schema of pipeline files (for editor completion) and exit",
    )
    p.add_argument("--out", metavar="DIR", help="run folder (default: the file's `out`)")
    p.add_argument(
        "--data",
        metavar="SOURCE",
        help="image source, any spec `featpipe extract` takes (built-in name, folder, CSV "
        "manifest, torchvision:, hf-dataset:, wds:); replaces source.data",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override a key by its dotted path, value in TOML (repeatable)",
    )
    p.add_argument(
        "--on-error",
        choices=ON_ERROR,
        help="an image that cannot be read, or whose features are NaN or infinite: stop (fail) "
        "or leave it out of every method (skip); replaces features.on_error",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_command, parser=p)

    r = subparsers.add_parser(
        "report",
        help="rebuild report.md and report.html of a run from its results.jsonl",
        description="Rebuild RUN_DIR/report.md, RUN_DIR/plots/*.png and RUN_DIR/report.html\n"
        "from the rows of RUN_DIR/results.jsonl that belong to the run's current configuration\n"
        "(listed in RUN_DIR/plan.json; a folder without one, from an older featpipe, reports\n"
        "every method's latest rows, with a note).",
        epilog="examples:\n"
        "  featpipe report runs/demo\n"
        "  featpipe report runs/heads   # rows appended by `featpipe probe --run-dir runs/heads`",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument(
        "run_dir",
        metavar="RUN_DIR",
        help="folder written by `featpipe run` (or a --run-dir of probe, finetune)",
    )
    r.set_defaults(func=report_command)


def run_command(args: argparse.Namespace) -> int:
    import json

    from featpipe.pipeline import load_config, pipeline_schema, run_pipeline

    if args.schema:
        print(json.dumps(pipeline_schema(), indent=2))
        return 0
    if args.pipeline is None:
        args.parser.error("the following arguments are required: FILE (or --schema)")
    overrides = list(args.overrides)
    if args.on_error:
        overrides.append(f'features.on_error="{args.on_error}"')
    config = load_config(args.pipeline, overrides, data=args.data, out=args.out)
    run_pipeline(config, progress=not args.quiet)
    return 0


def report_command(args: argparse.Namespace) -> int:
    from featpipe.report import write_report

    written = write_report(args.run_dir)
    print(f"wrote {written['report.md']} and {written['report.html']}")
    return 0
