"""`featpipe run` in a subprocess that stops itself at a chosen moment (the kill test).

    python run_child.py PHASE N [SIGNAL] -- ARGS...

runs ``featpipe ARGS`` and, at the N-th event of PHASE, sends its own process SIGNAL (default
SIGKILL; SIGINT and SIGTERM test the clean stop). PHASE is ``load`` (an image load: extraction
or a fine-tuning epoch), ``probe`` (a head fitted, its row not yet written), ``append`` (half of
a results row written) or ``report`` (report.md written, report.html not yet).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import toy_backbone  # noqa: F401  (registers 'toy')

import featpipe.heads
import featpipe.pipeline.runner as runner
import featpipe.report as report
from featpipe.cli import main
from featpipe.data.arrays import ArraySource


def install(phase: str, n: int, signum: int) -> None:
    seen = [0]

    def due() -> bool:
        seen[0] += 1
        return seen[0] == n

    def stop() -> None:
        os.kill(os.getpid(), signum)

    if phase == "load":
        real_load = ArraySource.load

        def load(self, index):
            if due():
                stop()
            return real_load(self, index)

        ArraySource.load = load
    elif phase == "probe":
        real_fit = featpipe.heads.select_and_fit

        def fit(*args, **kwargs):
            result = real_fit(*args, **kwargs)
            if due():
                stop()
            return result

        featpipe.heads.select_and_fit = fit
    elif phase == "append":
        real_append = runner.append_result

        def append(path, row):
            if due():
                with open(path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(row)[:300])
                stop()
            real_append(path, row)

        runner.append_result = append
    elif phase == "report":

        def render_html(doc):
            stop()

        report.render_html = render_html
    else:
        raise SystemExit(f"unknown phase {phase!r}")


if __name__ == "__main__":
    split = sys.argv.index("--")
    phase, n, *rest = sys.argv[1:split]
    install(phase, int(n), getattr(signal, rest[0]) if rest else signal.SIGKILL)
    sys.exit(main(sys.argv[split + 1 :]))
