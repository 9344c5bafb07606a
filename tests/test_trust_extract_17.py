"""The store records the precision a model computes in, for a model that is not float32.

A store extracted from a float64 or bfloat16 user model recorded ``compute.precision = "fp32"``
on the CPU, though the model computes in its own dtype (and on CUDA autocast leaves float64 in
float64). The precision now comes from the model's dtype (``input_dtype``), and so does every
comparison of compute: a float64 model's LP-FT still reads its pipeline store, its row says
fp64, predict does not warn. float32 models keep their store keys, compute and checkpoint
folders."""

from __future__ import annotations

import importlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import toy_backbone  # noqa: F401  (registers the 'toy' backbone)
from conftest import digits_config
from toy_backbone import ToyNet

from featpipe.backbones import Backbone, Preprocessing, register_backbone
from featpipe.backbones.registry import _BUILTINS
from featpipe.data import ArraySource
from featpipe.extract import extract
from featpipe.pipeline import run_pipeline
from featpipe.report import RESULTS_FILE

INFERENCE = importlib.import_module("featpipe.extract.inference")
DTYPES = {"float64": torch.float64, "bfloat16": torch.bfloat16}
STORE_KEY = "b3404d4a8274b9fc"  # of toy, float32, at 16 px over the digits of digits_config
# Its LP-FT checkpoint folder; the config hash moved on purpose when n_boot left job keys
# (200d550) and when LP-FT got its gradient cap (max_grad_norm 10 in the hash).
FOLDER = "toy-lpft-0-a4e8a319afb519f4-e593b736"
FINETUNE = {"modes": ["lpft"], "epochs": 1, "workers": 0, "batch_size": 16, "image_size": 16}


def _build(spec) -> Backbone:
    torch.manual_seed(0)
    return Backbone(
        spec=str(spec),
        model=ToyNet().to(DTYPES[spec.name.removeprefix("toy_pr_")]),
        preprocessing=Preprocessing(resize=36, crop=32),
        stages=["stem", "stage1", "stage2"],
    )


for _name in DTYPES:
    if f"toy_pr_{_name}" not in _BUILTINS:
        register_backbone(f"toy_pr_{_name}")(_build)


def _source() -> ArraySource:
    images = np.random.default_rng(0).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    return ArraySource(images, [0, 1, 2] * 4)


@pytest.mark.parametrize(("dtype", "label"), [("float64", "fp64"), ("bfloat16", "bf16")])
def test_a_store_of_a_model_of_another_dtype_records_its_precision(tmp_path, dtype, label):
    # Before: compute.precision was "fp32" for both.
    store = extract(
        _source(), f"toy_pr_{dtype}", cache_dir=tmp_path, workers=0, device="cpu", progress=False
    )
    assert store.attrs["compute"] == {"precision": label, "decode": "pil"}


def test_on_cuda_a_float64_model_computes_in_fp64_others_in_the_autocast_dtype(monkeypatch):
    monkeypatch.setattr(INFERENCE, "amp_dtype", lambda device: torch.bfloat16)  # a GPU's
    cuda = torch.device("cuda")
    assert INFERENCE.precision(cuda, torch.float64) == "fp64"  # autocast leaves float64 alone
    assert INFERENCE.precision(cuda, torch.float32) == "bf16"
    assert INFERENCE.precision(cuda, torch.bfloat16) == "bf16"
    assert INFERENCE.precision(cuda) == "bf16"
    monkeypatch.setattr(INFERENCE, "amp_dtype", lambda device: None)  # the CPU
    assert INFERENCE.precision(torch.device("cpu")) == "fp32"
    assert INFERENCE.precision(torch.device("cpu"), torch.float16) == "fp16"


def _rows(config) -> list[dict]:
    return [json.loads(line) for line in Path(config.out, RESULTS_FILE).read_text().splitlines()]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_float64_models_lpft_reads_its_pipeline_store_and_its_rows_say_fp64(tmp_path):
    config = digits_config(tmp_path, "d", finetune=FINETUNE, backbones=("toy_pr_float64",))
    run_pipeline(config, progress=False, log=lambda line: None)
    probe, tuned = sorted(_rows(config), key=lambda row: row["kind"] == "finetune")
    fp64 = {"precision": "fp64", "decode": "pil"}
    assert probe["provenance"]["compute"] == fp64
    assert tuned["provenance"]["compute"] == fp64
    # its LP-FT probe read the store (not computed its features again)
    assert tuned["provenance"]["store"]["key"] == probe["provenance"]["store"]["key"]
    assert len(list(Path(config.out, "finetune").iterdir())) == 1
    said: list[str] = []
    run_pipeline(config, progress=False, log=said.append)
    assert "2 already finished" in said[0]  # the planned compute is the rows' own


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_float32_models_store_key_compute_and_checkpoint_folder_are_unchanged(tmp_path):
    # Pinned from the code before the change: float32 models keep their stores and folders.
    config = digits_config(tmp_path, "d", finetune=FINETUNE)
    run_pipeline(config, progress=False, log=lambda line: None)
    probe, tuned = sorted(_rows(config), key=lambda row: row["kind"] == "finetune")
    fp32 = {"precision": "fp32", "decode": "pil"}
    assert probe["provenance"]["compute"] == tuned["provenance"]["compute"] == fp32
    assert probe["provenance"]["store"]["key"] == STORE_KEY
    assert tuned["provenance"]["store"]["key"] == STORE_KEY
    assert [p.name for p in Path(config.out, "finetune").iterdir()] == [FOLDER]


def test_predict_on_images_of_a_float64_models_head_does_not_warn_of_another_precision(
    tmp_path, capsys
):
    from featpipe.cli import main

    store = extract(
        _source(), "toy_pr_float64", cache_dir=tmp_path, workers=0, device="cpu", progress=False
    )
    heads = tmp_path / "heads"
    main(["probe", str(store.path), "--heads", "knn", "--save-dir", str(heads)])
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    Image.new("RGB", (32, 32), (10, 200, 30)).save(images / "a.png")
    (head,) = [p for p in heads.iterdir() if p.suffix != ".json"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # before: "another precision" had it been fp64 alone
        main(["predict", str(head), str(images), "--device", "cpu"])
