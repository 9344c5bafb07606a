"""A store that left images out, refused under on_error="fail", is told in the caller's words."""

from __future__ import annotations

import pytest

import featpipe
from featpipe.cli import main
from featpipe.errors import ImageReadError


def test_a_store_with_skips_is_refused_in_python_words_and_in_flags(image_folder, tmp_path, capsys):
    """Python callers read "run again (with --overwrite ...)", a flag they do not have, and
    the command line read "extracted with on_error='skip'", the parameter it has no use for."""
    broken = image_folder / "cat" / "001.jpg"
    broken.write_bytes(broken.read_bytes()[:300])  # truncated
    out = tmp_path / "s.h5"
    kwargs = dict(out=out, device="cpu", workers=0, progress=False)
    featpipe.extract(str(image_folder), "toy", on_error="skip", **kwargs)

    with pytest.raises(ImageReadError) as caught:
        featpipe.extract(str(image_folder), "toy", **kwargs)
    message = str(caught.value)
    assert 'extracted with on_error="skip" and leaves out 1 unreadable image' in message
    assert "(with overwrite=True if only file permissions changed)" in message
    assert "--" not in message

    argv = ["extract", str(image_folder), "--backbone", "toy", "--out", str(out)]
    assert main([*argv, "--workers", "0", "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "extracted with --on-error skip and leaves out 1 unreadable image" in err
    assert "Pass --on-error skip to use it" in err
    assert "(with --overwrite if only file permissions changed)" in err
    assert "on_error" not in err and "overwrite=" not in err
