"""Trust review of the command line, the Embedder and layer listing (session 8)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_image_folder
from torch import nn

from featpipe.backbones import Backbone, Preprocessing, register_backbone, unregister_backbone
from featpipe.cli import main
from featpipe.errors import ConfigError
from featpipe.heads import Embedder

IMAGES = np.random.default_rng(0).integers(0, 256, (3, 40, 40, 3), dtype=np.uint8)


def test_set_params_after_fit_gives_the_new_layers_features() -> None:
    """set_params(layer=...) after fit kept the old width: transform failed with numpy's
    'shape mismatch ... (3,16) ... (3,32)'; it now fits again, as fit learns no data."""
    emb = Embedder("toy", device="cpu", n_jobs=1).fit(IMAGES)
    assert emb.transform(IMAGES).shape == (3, 32)
    emb.set_params(layer="stage1")
    out = emb.transform(IMAGES)
    fresh = Embedder("toy", layer="stage1", device="cpu", n_jobs=1).fit().transform(IMAGES)
    np.testing.assert_array_equal(out, fresh)
    assert emb.n_features_out_ == 16 and len(emb.get_feature_names_out()) == 16


def test_transform_without_fit_works_as_its_tags_say() -> None:
    """requires_fit is False, yet transform without fit raised AttributeError
    'n_features_out_' (a traceback in a script)."""
    emb = Embedder("toy", device="cpu", n_jobs=1)
    assert emb.transform(IMAGES).shape == (3, 32)


def test_set_params_with_a_bad_batch_size_after_fit_is_refused() -> None:
    """batch_size=0 set after fit reached range() ('arg 3 must not be zero')."""
    emb = Embedder("toy", device="cpu", n_jobs=1).fit()
    with pytest.raises(ConfigError, match="batch_size must be >= 1; got 0"):
        emb.set_params(batch_size=0).transform(IMAGES)


@pytest.mark.parametrize("size", ["100000", "4097", "7"])
def test_an_absurd_image_size_is_refused_in_one_line(tmp_path, capsys, size) -> None:
    """--image-size 100000 asked torch for a 120 GB input and ended in an allocator
    traceback; sizes out of 8..4096 are refused before the backbone is built."""
    out = tmp_path / "s.h5"
    argv = ["extract", "digits", "--backbone", "toy", "--image-size", size, "--out", str(out)]
    with pytest.raises(SystemExit):  # the option's own check (test_trust_cli_5)
        main([*argv, "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"--image-size: must be a whole number of pixels from 8 to 4096; got '{size}'" in err
    assert not out.exists()
    with pytest.raises(ConfigError, match="from 8 to 4096 pixels"):
        Embedder("toy", image_size=int(size)).fit()


def test_a_shard_task_counts_the_images_it_skipped(tmp_path, capsys) -> None:
    """A shard task whose parts skipped an unreadable image said nothing of it, and its
    store.extraction['skipped'] read 0 until the store was complete."""
    folder = make_image_folder(tmp_path / "images")
    sorted(folder.rglob("*.jpg"))[0].write_bytes(b"not a jpeg")  # row 0: shard 0's part
    out = tmp_path / "s.h5"
    argv = ["extract", str(folder), "--backbone", "toy", "--out", str(out), "--chunk-rows", "1"]
    argv += ["--on-error", "skip", "--no-progress", "--workers", "0"]
    assert main([*argv, "--shard", "0/2"]) == 0
    said = capsys.readouterr().out
    assert "shard 0/2: filled 2 parts (9 images in" in said and "1 of them skipped" in said
    assert main([*argv, "--shard", "1/2"]) == 0
    said = capsys.readouterr().out
    assert "skipped 1 unreadable image" in said and "of them skipped" not in said


def test_layers_names_the_modules_between_the_last_stage_and_the_classifier(capsys) -> None:
    """The stage list ended at the last stage: MobileNetV3's classifier.0 to .2 (which compute
    'pooled' and which partial:N with every stage freezes) were in no line of it."""
    assert main(["layers", "torchvision:mobilenet_v3_small@none", "--image-size", "32"]) == 0
    said = capsys.readouterr().out.splitlines()
    tail = "  then, before the classifier 'classifier.3': avgpool, classifier.0, classifier.1, "
    assert said[-1] == tail + "classifier.2; frozen by partial:13 only"
    assert any(line.startswith("classifier.0 ") for line in said)  # and a layer to read


class Permute(nn.Module):
    def __init__(self, *dims: int):
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


def build_nhwc_toy(spec) -> Backbone:
    """A ConvNeXt-like block, as torchvision's CNBlock is: LayerNorm and Linear on H×W×C."""
    torch.manual_seed(0)
    block = nn.Sequential(Permute(0, 2, 3, 1), nn.LayerNorm(6), nn.Linear(6, 12))
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, stride=4, padding=1), block, Permute(0, 3, 1, 2), nn.Flatten(1)
    )
    model.append(nn.Sequential(nn.LazyLinear(5)))
    model(torch.zeros(1, 3, 32, 32))  # materialise the lazy layer
    return Backbone(spec=str(spec), model=model, preprocessing=Preprocessing(36, 32))


@pytest.fixture
def nhwc_toy():
    register_backbone("nhwc_toy")(build_nhwc_toy)
    yield
    unregister_backbone("nhwc_toy")


def test_a_channels_last_map_is_pooled_only_by_none(nhwc_toy, capsys) -> None:
    """torchvision's and transformers' ConvNeXt blocks (and timm's with conv_mlp off) run
    their LayerNorm and Linears on H×W×C maps that no list of channels-last layers named:
    'features.7.2.block.3' (2×2×3072 at 64 px) was averaged over W and C into 2 features."""
    with pytest.raises(ConfigError, match=r"'1\.2' gives channels-last maps \(H×W×C = 8×8×12"):
        Embedder("nhwc_toy", layer="1.2", n_jobs=1).fit()
    with pytest.raises(ConfigError, match="pooling 'max' would reduce over W and C"):
        Embedder("nhwc_toy", layer="1.1:max", n_jobs=1).fit()
    assert Embedder("nhwc_toy", layer="1.2:none", n_jobs=1).transform(IMAGES).shape == (3, 768)
    assert Embedder("nhwc_toy", layer="0", n_jobs=1).transform(IMAGES).shape == (3, 6)
    assert main(["layers", "nhwc_toy", "--filter", "1."]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[4:7]]
    assert rows == [
        ["1.0", "8×8×6", "ask", ":none", "384"],
        ["1.1", "8×8×6", "ask", ":none", "384"],
        ["1.2", "8×8×12", "ask", ":none", "768"],
    ]


@pytest.mark.parametrize(
    ("option", "said"),
    [
        ("--out", "--out {d} is a folder; it must name a file, e.g. {d}/results.json"),
        ("--save-dir", "--save-dir {f}: {f} is a file, not a folder"),
        ("--run-dir", "--run-dir {f}: {f} is a file, not a folder"),
    ],
)
def test_probe_refuses_an_output_it_cannot_write_before_fitting(
    image_folder, tmp_path, capsys, monkeypatch, option, said
) -> None:
    """probe --out FOLDER fitted every head, then ended in IsADirectoryError; --save-dir FILE
    in FileExistsError after the first head (tracebacks, and the fits lost)."""
    store = tmp_path / "s.h5"
    argv = ["extract", str(image_folder), "--backbone", "toy", "--out", str(store)]
    assert main([*argv, "--no-progress", "--workers", "0"]) == 0
    capsys.readouterr()
    monkeypatch.setattr("featpipe.heads.select_and_fit", lambda *a, **k: pytest.fail("fitted"))
    where = tmp_path if option == "--out" else store
    assert main(["probe", str(store), option, str(where), "--heads", "knn"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and said.format(d=tmp_path, f=store) in err


@pytest.mark.parametrize("given", [["--epochs", "0"], ["--grid", "epochs=2,0"]])
def test_finetune_refuses_zero_epochs_as_a_pipeline_does(tmp_path, capsys, given) -> None:
    """featpipe finetune --epochs 0 trained nothing and reported the untrained network (10 %
    on digits) as a fine-tune, in a run folder; the pipeline refuses finetune.epochs = 0."""
    argv = ["finetune", "--data", "digits", "--backbone", "toy", "--run-dir", str(tmp_path / "r")]
    assert main([*argv, *given, "--limit-train", "20", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "epochs=0 trains no epoch" in err or "--epochs 0 trains no epoch" in err
    assert not (tmp_path / "r").exists()
