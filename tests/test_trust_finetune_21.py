"""Fine-tuning a user model whose weights are not float32 (``model.double()``, bfloat16).

Extraction feeds such a model its own dtype (``input_dtype``), but fine-tuning stopped with
torch's "mat1 and mat2 must have the same dtype" traceback: the new head was float32 and the
training batches went in as float32. It now trains in the model's dtype."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from toy_backbone import ToyNet

from featpipe.backbones import Backbone, Preprocessing, register_backbone
from featpipe.backbones.registry import _BUILTINS
from featpipe.data import ArraySource
from featpipe.finetune import FineTuner
from featpipe.finetune.callbacks import Callback

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


class _SeesDtype(ToyNet):
    """ToyNet that records the dtype of the images it trains on."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.seen.add(x.dtype)
        return super().forward(x)


def _build(spec) -> Backbone:
    torch.manual_seed(0)
    model = _SeesDtype().to(DTYPES[spec.name.removeprefix("toy_")])
    model.seen = set()
    return Backbone(
        spec=str(spec),
        model=model,
        preprocessing=Preprocessing(resize=36, crop=32),
        stages=["stem", "stage1", "stage2"],
    )


for _name in DTYPES:
    if f"toy_{_name}" not in _BUILTINS:
        register_backbone(f"toy_{_name}")(_build)


def _source() -> ArraySource:
    images = np.random.default_rng(0).integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
    return ArraySource(images, [0, 1, 2] * 8, splits=["train"] * 16 + ["test"] * 8)


def _tuner(dtype: str, mode: str, **params) -> FineTuner:
    return FineTuner(f"toy_{dtype}", mode=mode, batch_size=8, device="cpu", verbose=0, **params)


class _StopAfter(Callback):
    """Ctrl-C at the end of epoch ``epoch``, after the checkpoint callbacks ran."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_end(self, tuner, logs):
        if logs["epoch"] == self.epoch:
            raise KeyboardInterrupt


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("mode", ["full", "lpft"])
@pytest.mark.parametrize("dtype", ["float64", "bfloat16"])
def test_a_model_of_another_dtype_than_float32_fine_tunes_in_its_dtype(dtype, mode):
    # Before: RuntimeError "mat1 and mat2 must have the same dtype, but got Double and Float"
    # (bfloat16 LP-FT: "Input type (float) and bias type (c10::BFloat16)") out of fit.
    source = _source()
    ft = _tuner(dtype, mode, epochs=1).fit(source)
    assert {p.dtype for p in ft.model_.parameters()} == {DTYPES[dtype]}
    assert ft.model_.seen == {DTYPES[dtype]}
    proba = ft.predict_proba("test")
    assert proba.shape == (8, 3) and np.allclose(proba.sum(axis=1), 1, atol=1e-3)
    if dtype == "float64":  # the same training as float32's, to float32's rounding
        reference = _tuner("float32", mode, epochs=1).fit(source)
        assert reference.model_.seen == {torch.float32}
        assert np.allclose(proba, reference.predict_proba("test"), atol=1e-4)
        if mode == "lpft":
            assert ft.probe_ == reference.probe_ | {"seconds": ft.probe_["seconds"]}


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_float64_fine_tune_resumes_as_it_would_have_gone_on(tmp_path):
    # last.pt holds float64 weights, optimiser state and the LP-FT head; the resumed run ends
    # where the uninterrupted one does.
    source = _source()
    whole = _tuner("float64", "lpft", epochs=2).fit(source)
    with pytest.raises(KeyboardInterrupt):
        _tuner("float64", "lpft", epochs=2, run_dir=tmp_path, callbacks=[_StopAfter(1)]).fit(source)
    resumed = _tuner("float64", "lpft", epochs=2, run_dir=tmp_path).fit(source)
    assert resumed.start_epoch_ == 1
    assert {p.dtype for p in resumed.model_.parameters()} == {torch.float64}
    assert np.allclose(resumed.predict_proba("test"), whole.predict_proba("test"), atol=1e-6)
