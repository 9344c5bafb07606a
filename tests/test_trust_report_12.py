"""Report trust checks, session 13: what the cost table's memory column measures."""

from __future__ import annotations

from test_report import make_row

from featpipe.report.content import build_document
from featpipe.report.markdown import render_markdown


def test_the_peak_host_memory_column_says_it_is_the_main_process_s():
    # peak_host_bytes is the main process's VmHWM: a fine-tune with 2 DataLoader workers wrote
    # 924 MiB while its workers held 1107 MiB RSS (45 MiB of it private). The column read
    # "peak host MiB", as if it were the method's whole host memory.
    md = render_markdown(build_document([make_row("toy/logreg@pooled")], n_boot=40))
    assert "| peak host MiB (main process) |" in md
