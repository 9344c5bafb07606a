"""Trust sweep 10: the extraction loop and the CLI's entry (Ctrl-C while starting)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from featpipe import cli

# Sends Ctrl-C to its own process when torch starts to import (featpipe imports it first).
CTRL_C_AT_TORCH = """\
import os, signal, sys

class CtrlCAtTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, CtrlCAtTorch())
"""


def _run_with_ctrl_c_at_torch(tmp_path: Path, command: list[str]) -> subprocess.CompletedProcess:
    (tmp_path / "sitecustomize.py").write_text(CTRL_C_AT_TORCH)
    root = Path(cli.__file__).parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(root)])}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("how", ["console script", "python -m"])
def test_ctrl_c_while_torch_imports_is_one_line_and_130(tmp_path, how):
    """The command cannot catch a Ctrl-C before main() starts: it printed torch's import
    traceback (or, by timing, a RecursionError from a half-imported numpy, or a C++ abort)."""
    if how == "console script":  # as pip writes it
        script = tmp_path / "featpipe"
        script.write_text("import sys\nfrom featpipe.cli import main\nsys.exit(main())\n")
        command = [sys.executable, str(script), "backbones"]
    else:
        command = [sys.executable, "-m", "featpipe", "backbones"]
    done = _run_with_ctrl_c_at_torch(tmp_path, command)
    assert done.returncode == 128 + signal.SIGINT, done.stderr
    assert done.stderr == "featpipe: interrupted while starting; nothing was done\n"


def test_a_program_importing_featpipe_keeps_its_ctrl_c(tmp_path):
    """Only the featpipe command exits quietly: a program's own Ctrl-C stays a KeyboardInterrupt."""
    code = "try:\n    import featpipe\nexcept KeyboardInterrupt:\n    print('caught')\n"
    done = _run_with_ctrl_c_at_torch(tmp_path, [sys.executable, "-c", code])
    assert done.returncode == 0, done.stderr
    assert done.stdout == "caught\n"


def test_ctrl_c_while_the_parser_is_built_is_one_line(monkeypatch, capsys):
    """build_parser imports every command's module, outside main's handling before."""

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    try:
        code = cli.main(["backbones"])
    except KeyboardInterrupt:  # raised into pytest, it would stop the whole session
        pytest.fail("the Ctrl-C left main() as a KeyboardInterrupt")
    assert code == 130
    assert capsys.readouterr().err == "featpipe: interrupted\n"


def test_a_decoding_worker_that_dies_is_one_line_and_the_run_resumes(tmp_path, monkeypatch):
    """A DataLoader worker killed by the system (out of memory; loader workers decode on CUDA
    and for torch.compile) ended featpipe extract in torch's RuntimeError traceback; the
    chunks written before it are kept and the same call resumes to the same features."""
    import toy_backbone  # noqa: F401  (registers "toy")
    from conftest import make_image_folder

    from featpipe.data import ImageFolderSource
    from featpipe.errors import IncompleteStoreError
    from featpipe.extract import datapath, extract, loop

    source = ImageFolderSource(make_image_folder(tmp_path / "img"))
    options = dict(image_size=32, batch_size=3, chunk_rows=3, progress=False)
    expected = extract(source, "toy", ["pooled"], out=tmp_path / "ref.h5", workers=0, **options)
    load, test_process = datapath.CPUDataPath.load, os.getpid()

    def dies_at_row_16(self, source, row):
        if row == 16 and os.getpid() != test_process:  # in a loader worker only
            os.kill(os.getpid(), signal.SIGKILL)
        return load(self, source, row)

    monkeypatch.setattr(loop, "lane_count", lambda *_: 0)  # loader workers, as on CUDA
    monkeypatch.setattr(datapath.CPUDataPath, "load", dies_at_row_16)
    out = tmp_path / "s.h5"
    with pytest.raises(IncompleteStoreError, match=r"worker.*Run the same command to resume"):
        extract(source, "toy", ["pooled"], out=out, workers=2, **options)
    monkeypatch.setattr(datapath.CPUDataPath, "load", load)
    store = extract(source, "toy", ["pooled"], out=out, workers=2, **options)
    assert store.complete and store.ids() == expected.ids()
    np.testing.assert_array_equal(store.arrays("pooled")[0], expected.arrays("pooled")[0])


def test_a_second_ctrl_c_while_the_lanes_stop_keeps_the_resume_message(tmp_path, monkeypatch):
    """Stopping waits for the batches the lanes are computing; a second Ctrl-C meanwhile
    replaced 'interrupted: N of M chunks done; run the same command to resume' by a bare
    'interrupted' (seen with two Ctrl-C 50 ms apart on featpipe extract)."""
    import toy_backbone  # noqa: F401  (registers "toy")
    from conftest import make_image_folder

    from featpipe.data import ImageFolderSource
    from featpipe.extract import extract, loop
    from featpipe.interrupt import Interrupted

    start = loop._start

    def first_ctrl_c_at_the_third_batch(*args):
        computed, stop = start(*args)

        def pieces():
            for i, piece in enumerate(computed):
                if i == 2:
                    raise KeyboardInterrupt
                yield piece

        def stop_then_second_ctrl_c():
            stop()
            raise KeyboardInterrupt

        return pieces(), stop_then_second_ctrl_c

    monkeypatch.setattr(loop, "_start", first_ctrl_c_at_the_third_batch)
    source = ImageFolderSource(make_image_folder(tmp_path / "img"))
    with pytest.raises(KeyboardInterrupt) as stopped:  # a bare one would stop pytest itself
        extract(
            source,
            "toy",
            ["pooled"],
            out=tmp_path / "s.h5",
            image_size=32,
            batch_size=3,
            chunk_rows=3,
            workers=2,
            progress=False,
        )
    assert isinstance(stopped.value, Interrupted), "a bare KeyboardInterrupt"
    assert stopped.value.message == (
        "interrupted: 2 of 6 chunks done; run the same command to resume"
    )
