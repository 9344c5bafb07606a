"""The ``featpipe`` command: one console script, a subcommand per job."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import os
import re
import sys
import traceback
import warnings
from collections.abc import Iterator
from typing import NoReturn

from featpipe.distributed.ranks import current_ranks
from featpipe.errors import FeaturePipeError
from featpipe.interrupt import Interrupted, handle_sigterm, say, stop_at_once

# Each module defines ``register(subparsers)``, which adds its subcommands and sets ``func``.
COMMAND_MODULES = ("backbones", "extract", "heads", "export", "finetune", "run", "cache", "check")

DESCRIPTION = """\
featpipe: frozen-backbone features cached in HDF5, classical heads on them, and fine-tuning
of the same backbone, compared under one evaluation harness.

Typical session:
  featpipe backbones                         # what can be loaded
  featpipe layers efficientnet_lite0         # which layers can be read
  featpipe extract digits --layers pooled blocks.5:avg
  featpipe info data/cache/<store>.h5        # what a store holds
  featpipe cache list                        # every store in data/cache, and its state
  featpipe probe data/cache/<store>.h5 --layer pooled
  featpipe export data/cache/<store>.h5 --layer pooled --out features.parquet
  featpipe run pipelines/demo.toml           # a declared experiment with its report

Errors print one line; FEATPIPE_DEBUG=1 prints their full traceback as well.
"""


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose usage errors (a bad choice, a missing argument) are one line
    as the others: the whole usage before it buried it (`--help` shows it)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    # Subcommands' parsers are built by add_parser as the same class as this one.
    parser = _Parser(
        prog="featpipe",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from featpipe._version import __version__

    parser.add_argument("--version", action="version", version=f"featpipe {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"featpipe.cli.{name}").register(sub)
    return parser


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """One line per warning, without the library's source path and line."""
    kind = "" if category is UserWarning else f" ({category.__name__})"
    tag = current_ranks().tag  # in a multi-process job, whose warning it is
    who = f" [{tag}]" if tag else ""
    return f"featpipe{who}: warning: {message}{kind}\n"


@contextlib.contextmanager
def _plain_warnings() -> Iterator[None]:
    # formatwarning rather than showwarning: code that records warnings (catch_warnings,
    # pytest.warns) still gets them.
    previous = warnings.formatwarning
    warnings.formatwarning = _format_warning
    try:
        yield
    finally:
        warnings.formatwarning = previous


def _who(command: str | None) -> str:
    """``featpipe extract``, or ``featpipe [rank 1/4] extract`` in a multi-process job: each
    rank prints its own error (a failed rank 1, rank 0 stopped by torchrun)."""
    try:
        tag = current_ranks().tag
    except FeaturePipeError:  # torchrun's variables are the error being reported
        tag = ""
    who = f"featpipe [{tag}]" if tag else "featpipe"
    return f"{who} {command}" if command else who


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parse_args``, but an unknown option is the error of the (sub)command it was given to,
    with a close match (argparse blamed ``featpipe`` under its top-level usage)."""
    args, extras = parser.parse_known_args(argv)
    if not extras:
        return args
    command = _chosen(parser, args)
    known = [o for action in command._actions for o in action.option_strings if o[:2] == "--"]
    hints = []
    for given in (e.split("=")[0] for e in extras if e[:2] == "--"):
        hints += [f"did you mean {m}?" for m in difflib.get_close_matches(given, known, n=1)]
    hint = f" ({'; '.join(hints)})" if hints else ""
    command.error(
        f"unrecognized arguments: {' '.join(extras)}{hint}; `{command.prog} --help` lists "
        "the options"
    )


def _chosen(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The innermost subcommand's parser that ``args`` chose (``featpipe cache list``)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = action.choices.get(getattr(args, action.dest, None))
            if chosen is not None:
                return _chosen(chosen, args)
    return parser


# A setting as the API names it in a message: on_error="skip", resume=False (a full stop
# after it is not part of its value).
_SETTING = r"([a-z][a-z0-9_]*)=\"?([\w-]+(?:\.[\w-]+)*)\"?"
_SETTINGS = re.compile(rf"(?<![\w.-]){_SETTING}")
# A flag followed by its API spelling, for the library's callers: --force (force=True).
_SPELLED = re.compile(rf"(--[\w-]+(?: [\w.-]+)?) \({_SETTING}\)")
_FLAG_BEFORE = re.compile(r"--[\w-]+ $")  # a setting right after a flag is the flag's value
# A parameter followed by its flag, for both callers: workers (CLI: --workers).
_BOTH_WORDS = re.compile(r"(?<![\w.-])([a-z][a-z0-9_]*) \(CLI: (--[\w-]+)\)")


def as_flags(message: str, command: argparse.ArgumentParser) -> str:
    """A library message in the words of ``command``, for each API parameter that is one of
    its options: a parameter named with its flag (``workers (CLI: --workers)``) is the flag
    alone; a rule on it (``lr must be ...``) names its flag wherever it names it, and
    None, which no flag gives, as leaving the flag out; a setting is the flag and its value
    (``on_error="skip"`` as ``--on-error skip``), a switch's True its bare flag and False its
    ``--no-`` flag where there is one (else the setting stays), unless the message names the
    flag already; and a flag's API spelling after it (``--force (force=True)``) is dropped."""
    options = {o: action for action in command._actions for o in action.option_strings}

    def flag(name: str) -> str | None:
        option = "--" + name.replace("_", "-")
        return option if option in options else None

    def words(name: str, value: str) -> str | None:
        """The command's words for the setting ``name=value``; None when it has none."""
        if value in ("True", "False"):
            option = "--" + ("no-" if value == "False" else "") + name.replace("_", "-")
            return option if getattr(options.get(option), "nargs", None) == 0 else None
        option = flag(name)
        return f"{option} {value}" if option and options[option].nargs != 0 else None

    def setting(m: re.Match) -> str:
        before = m.string[: m.start()]
        if before.endswith("'") or _FLAG_BEFORE.search(before):  # typed input (--grid lr=0.1)
            return m[0]
        said = words(m[1], m[2])
        return said if said and said.split()[0] not in message else m[0]

    # The command's flag alone where a message names a parameter and its flag side by side.
    message = _BOTH_WORDS.sub(lambda m: m[2] if flag(m[1]) == m[2] else m[0], message)
    name, _, rest = message.partition(" ")
    # A rule on a setting (lr must be ...), or one naming its value (warmup_epochs 2 is ...):
    # a lone English word (layer, split) that happens to be an option is not a setting.
    if (rest.startswith("must ") or "_" in name) and (lead := flag(name)):
        rest = re.sub(rf"(?<![\w-]){re.escape(name)}(?!\w)", lead, rest)
        message = f"{lead} {rest.replace(' or None', ' or left out')}"
    message = _SPELLED.sub(lambda m: m[1] if words(m[2], m[3]) == m[1] else m[0], message)
    return _SETTINGS.sub(setting, message)


def main(argv: list[str] | None = None) -> int:
    command, chosen = None, None  # known once the arguments are parsed
    try:
        # Building the parser imports every command's module: a Ctrl-C then is one line too.
        with handle_sigterm(), _plain_warnings():
            parser = build_parser()
            args = _parse(parser, argv)
            if not getattr(args, "func", None):
                parser.print_help()
                return 2
            # "cache list", not "cache": the words the user typed
            chosen = _chosen(parser, args)
            command = chosen.prog.removeprefix(parser.prog).strip()
            return int(args.func(args) or 0)
    except FeaturePipeError as exc:
        if os.environ.get("FEATPIPE_DEBUG") == "1":  # the full traceback, for bug reports
            traceback.print_exc()
        say(f"{_who(command)}: error: {as_flags(str(exc), chosen) if chosen else exc}")
        return 2
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        sys.stderr.close()
        return 0
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (see featpipe.interrupt)
        stop = Interrupted.from_exception(exc)
        say(f"{_who(command)}: {stop.message}")
        return stop.exit_code
    finally:
        stop_at_once()  # the command's exit is not to be broken into by a further Ctrl-C


if __name__ == "__main__":
    sys.exit(main())
