"""The command line speaks in flags, refuses what it can before the data is opened, and the
torch MLP sizes its threads as the L-BFGS heads do."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import toy_backbone  # noqa: F401  (registers 'toy')
from conftest import record_calls

import featpipe.data
from featpipe.cli import main

TINY = ["--backbone", "toy", "--epochs", "1", "--batch-size", "4", "--no-progress"]


@pytest.mark.parametrize(
    "given, said",
    [
        (["--lr", "-1"], "--lr must be a number > 0; got -1.0."),
        (["--patience", "-1"], "--patience must be an integer >= 0 or left out (0 or left out"),
        (["--dropout", "2"], "--dropout must be a number in [0, 1); got 2.0."),
    ],
)
def test_finetune_errors_name_the_flags(tmp_path, capsys, given, said) -> None:
    """They said "lr must be ...", and "0 or None", which no flag can give."""
    assert main(["finetune", "--data", str(tmp_path / "nope"), *TINY, *given]) == 2
    err = capsys.readouterr().err
    assert said in err and "None" not in err, err


@pytest.mark.parametrize("command", ["extract", "finetune"])
@pytest.mark.parametrize("size", ["3", "5000", "x"])
def test_every_command_checks_image_size_alike(tmp_path, capsys, command, size) -> None:
    """finetune said "image_size must be an integer >= 8 or None", extract "image size must
    be from 8 to 4096 pixels": one check, in the option, for both."""
    with pytest.raises(SystemExit):
        data = ["digits"] if command == "extract" else ["--data", "digits"]
        main([command, *data, "--image-size", size, "--backbone", "toy"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (
        f"featpipe {command}: error: argument --image-size: must be a whole number of pixels "
        f"from 8 to 4096; got '{size}'. Leave it out to use the size the weights were "
        "trained at."
    )


@pytest.mark.parametrize(
    "given, said",
    [
        (["--backbone", "nope"], "Unknown backbone 'nope'"),
        (["--backbone", "toy", "--mode", "partial:99"], "freezes more stages than"),
        (["--backbone", "toy", "--limit-train", "0"], "--limit-train 0 leaves no images to"),
    ],
)
def test_finetune_refuses_before_opening_the_source(
    split_image_folder, monkeypatch, capsys, given, said
) -> None:
    """An unknown backbone or too many frozen stages were refused only after the source was
    opened and scanned; --limit-train 0 ended in "no train split", its cause unnamed."""
    opened = record_calls(monkeypatch, featpipe.data, "open_source")
    argv = ["finetune", "--data", str(split_image_folder), *TINY, *given]
    assert main(argv) == 2
    assert said in capsys.readouterr().err
    assert opened == []


@pytest.mark.filterwarnings("ignore:The fine-tune chose epoch")
def test_a_backbone_built_only_with_its_weights_still_fine_tunes(split_image_folder, tmp_path):
    """The early check builds the architecture without weights; a registered model that
    refuses that was refused before its fit, which builds it with its weights, could run."""
    from toy_backbone import build_toy

    from featpipe.backbones import register_backbone, unregister_backbone
    from featpipe.errors import ConfigError

    def build(spec):
        if spec.weights == "none":
            raise ConfigError("this model has no random initialisation")
        return build_toy(spec)

    register_backbone("weights_only", replace=True)(build)
    try:
        argv = ["finetune", "--data", str(split_image_folder), *TINY, "--backbone", "weights_only"]
        assert main([*argv, "--run-dir", str(tmp_path / "run")]) == 0
    finally:
        unregister_backbone("weights_only")


@pytest.mark.filterwarnings("ignore:The fine-tune chose epoch")
def test_a_failing_metrics_write_leaves_the_old_file(split_image_folder, tmp_path, monkeypatch):
    """metrics.json was written in place: a full disk left it cut short."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    old = '{"val_accuracy": 0.5}\n'
    (run_dir / "metrics.json").write_text(old)
    real = {"write_text": Path.write_text, "write_bytes": Path.write_bytes}

    def disk_full(how: str):
        def write(path: Path, data, *args, **kwargs):
            if "metrics" not in path.name:
                return real[how](path, data, *args, **kwargs)
            real[how](path, data[: len(data) // 2], *args, **kwargs)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

        return write

    for how in real:
        monkeypatch.setattr(Path, how, disk_full(how))
    argv = ["finetune", "--data", str(split_image_folder), *TINY, "--run-dir", str(run_dir)]
    with pytest.raises(OSError, match="No space left"):
        main(argv)
    assert (run_dir / "metrics.json").read_text() == old
    assert [p.name for p in run_dir.glob(".metrics*")] == []


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_a_small_mlp_fit_runs_on_one_thread(digits, monkeypatch) -> None:
    """The MLP took a thread per core for any problem (logreg's 4-28x under load on 2 cores);
    a given n_threads is kept."""
    import featpipe.heads.torch_logreg
    import featpipe.heads.torch_mlp as torch_mlp

    monkeypatch.setattr(featpipe.heads.torch_logreg, "available_cores", lambda: 2)
    threads = record_calls(monkeypatch, torch_mlp, "torch_threads")
    X, y, _, _ = digits
    torch_mlp.TorchMLPClassifier(max_iter=2, random_state=0).fit(X, y)
    torch_mlp.TorchMLPClassifier(max_iter=2, random_state=0, n_threads=2).fit(X, y)
    assert threads == [1, 2]


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_the_mlp_on_digits_is_unchanged_by_its_threads(digits) -> None:
    """One thread (the choice now) learns what a thread per core learned."""
    from featpipe.heads.torch_mlp import TorchMLPClassifier

    X, y, Xt, yt = digits
    fits = [TorchMLPClassifier(max_iter=30, random_state=0, n_threads=t).fit(X, y) for t in (1, 2)]
    assert fits[0].n_iter_ == fits[1].n_iter_
    np.testing.assert_allclose(fits[0].predict_proba(Xt), fits[1].predict_proba(Xt), atol=1e-4)
    assert fits[0].score(Xt, yt) == fits[1].score(Xt, yt)
    np.testing.assert_allclose(fits[0].loss_curve_, fits[1].loss_curve_, rtol=1e-4)
