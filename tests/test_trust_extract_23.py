"""One image given to an Embedder where a batch belongs: the error names what it got and the
list to pass. Before, it said 'Pass a sequence of images, not a single image (wrap it in a
list).', never what was received."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from featpipe.errors import ConfigError
from featpipe.extract.embedder import Embedder


@pytest.fixture(scope="module")
def embedder():
    return Embedder("toy", device="cpu", n_jobs=1).fit()


def test_one_path_as_a_str_is_named_with_the_list_to_pass(embedder):
    with pytest.raises(ConfigError) as err:
        embedder.transform("imgs/0.png")
    assert str(err.value) == (
        "Embedder takes a sequence of images; got one image, the str 'imgs/0.png': wrap it in "
        "a list, ['imgs/0.png']."
    )


def test_one_path_or_pil_image_says_what_it_is(embedder):
    with pytest.raises(ConfigError, match=r"got one image, the PosixPath 'imgs/0\.png'"):
        embedder.transform(Path("imgs/0.png"))
    with pytest.raises(ConfigError, match=r"got one image, a PIL image of 8x6: .*\[image\]"):
        embedder.fit_transform(Image.new("RGB", (8, 6)))
