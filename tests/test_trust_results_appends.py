"""Rows appended by `featpipe probe/finetune --run-dir` next to a killed or running
`featpipe run`: nothing written is lost or glued together."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from test_report import make_row

from featpipe.report import (
    RESULTS_FILE,
    ResultRow,
    append_result,
    read_results,
    record_rows,
    write_report,
)
from featpipe.store.lock import lock_path


def test_an_append_after_a_killed_writer_drops_its_half_line_not_the_new_row(tmp_path):
    path = tmp_path / RESULTS_FILE
    first, second = make_row("a"), make_row("b")
    append_result(path, first)
    with path.open("a") as fh:
        fh.write(json.dumps(make_row("killed"))[:80])  # a row cut off by a kill
    with pytest.warns(UserWarning, match="partial last line"):
        append_result(path, second)
    assert [r["method"] for r in read_results(path)] == ["a", "b"]


def test_record_rows_waits_for_a_run_holding_the_folder(tmp_path, capfd):
    held = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from featpipe.store.lock import StoreLock\n"
            f"with StoreLock({str(tmp_path / RESULTS_FILE)!r}):\n"
            "    print('held', flush=True); time.sleep(3)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert held.stdout.readline().strip() == "held"
        assert lock_path(tmp_path / RESULTS_FILE).exists()
        start = time.monotonic()
        record_rows(tmp_path, [ResultRow.from_json(make_row("a"))])
        waited = time.monotonic() - start
    finally:
        held.wait(timeout=30)
    assert "waiting for" in capfd.readouterr().err
    assert waited > 0.5  # it returned only once the other process let go
    assert [r["method"] for r in read_results(tmp_path / RESULTS_FILE)] == ["a"]


def test_plots_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / RESULTS_FILE
    append_result(path, make_row("a"))
    written = write_report(tmp_path)
    png = next(p for name, p in written.items() if p.suffix == ".png")
    before = png.read_bytes()

    from featpipe.report import results

    real = results.os.replace

    def killed(src, dst):  # the process dies after writing the temporary file
        if str(dst).endswith(".png"):
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(results.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_report(tmp_path)
    assert png.read_bytes() == before


def test_two_processes_writing_one_report_file_at_once_both_succeed(tmp_path):
    # `featpipe report DIR` while `featpipe run` finishes the same folder: both write
    # report.md; a shared temporary name made one of them fail on a file the other renamed.
    from concurrent.futures import ThreadPoolExecutor

    from featpipe.atomic import write_text_atomic

    target = tmp_path / "report.md"

    def write(i: int) -> None:
        for _ in range(200):
            write_text_atomic(target, f"report {i}\n" * 1000)

    with ThreadPoolExecutor(4) as pool:
        for done in [pool.submit(write, i) for i in range(4)]:
            done.result()
    assert target.read_text().startswith("report ")
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]  # no temporary left behind
