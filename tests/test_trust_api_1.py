"""Layer requests a Python user writes wrongly are refused in one line, with what to pass."""

from __future__ import annotations

import numpy as np
import pytest
from extract_child import NoiseSource
from sklearn.pipeline import FeatureUnion

from featpipe.errors import ConfigError
from featpipe.extract import plan_extraction
from featpipe.heads import Embedder

FAST = dict(workers=0, device="cpu", progress=False, dtype="float32")


def images(n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (24, 24, 3), dtype=np.uint8) for _ in range(n)]


def test_an_embedder_given_a_list_of_layers_says_what_to_pass():
    """Before: AttributeError: 'list' object has no attribute 'strip', from LayerSpec.parse."""
    embedder = Embedder("toy", layer=["pooled"], device="cpu", batch_size=4)
    with pytest.raises(ConfigError) as err:
        embedder.fit_transform(images())
    said = str(err.value)
    assert "\n" not in said and "got the list ['pooled']" in said
    assert "layer='pooled'" in said and "FeatureUnion" in said


def test_the_feature_union_the_message_advises_gives_both_layers():
    """The advice for several layers works as written: one Embedder per layer."""
    kw = dict(device="cpu", batch_size=4)
    union = FeatureUnion(
        [("pooled", Embedder("toy", layer="pooled", **kw)), ("stage1", Embedder("toy", **kw))]
    )
    union.set_params(stage1__layer="stage1")
    out = union.fit_transform(images())
    pooled = Embedder("toy", layer="pooled", **kw).fit_transform(images())
    stage1 = Embedder("toy", layer="stage1", **kw).fit_transform(images())
    assert out.shape == (3, pooled.shape[1] + stage1.shape[1])
    np.testing.assert_array_equal(out, np.hstack([pooled, stage1]))


@pytest.mark.parametrize("layers", ["pooled,stage1", "pooled stage1", "pooled, stage1"])
def test_one_string_holding_several_requests_is_refused_with_the_list(tmp_path, layers):
    """Before: UnknownNameError "Unknown layer 'pooled,stage1'. Did you mean ..." (or the
    string split at ':' as a module and pooling), pointing at the wrong names."""
    with pytest.raises(ConfigError) as err:
        plan_extraction(NoiseSource(4), "toy", layers, cache_dir=tmp_path, **FAST)
    said = str(err.value)
    assert "\n" not in said and "holds 2 requests" in said
    assert "layers=['pooled', 'stage1']" in said


def test_a_non_str_layer_request_in_a_list_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="got the int 3"):
        plan_extraction(NoiseSource(4), "toy", ["pooled", 3], cache_dir=tmp_path, **FAST)
