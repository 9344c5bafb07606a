"""FineTuner: modes freeze what they say, LP-FT starts at the probe, model selection, resume."""

from __future__ import annotations

import copy
import io
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from finetune_child import BATCH, N_TRAIN, N_VAL, synthetic_source
from PIL import Image
from sklearn.datasets import make_classification
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from torch import nn
from toy_backbone import build_toy

from featpipe.backbones import Preprocessing, get_backbone, register_backbone, unregister_backbone
from featpipe.cli import main as cli_main
from featpipe.data import ArraySource, ImageSource
from featpipe.errors import ConfigError, HeadMismatchError, StoreMismatchError
from featpipe.extract import extract
from featpipe.finetune import Callback, FineTuner, Mode, checkpoint, probe
from featpipe.finetune.data import train_transform
from featpipe.finetune.freezing import freeze
from featpipe.finetune.recipe import param_groups, warmup_cosine
from featpipe.interrupt import Interrupted, deferred, handle_sigterm
from featpipe.report import read_results

CHILD = Path(__file__).with_name("finetune_child.py")


def tuner(**kw) -> FineTuner:
    params = dict(epochs=2, batch_size=8, lr=0.05, patience=None, verbose=0, seed=0)
    return FineTuner("toy", **{**params, **kw})


class Snapshots(Callback):
    """Copies of the weights at the end of every epoch (epoch 0 = before training)."""

    def __init__(self):
        self.states: dict[int, dict] = {}

    def on_epoch_end(self, tuner, logs):
        self.states[logs["epoch"]] = copy.deepcopy(tuner.model_.state_dict())


@pytest.fixture(scope="module")
def source() -> ArraySource:
    return synthetic_source()


def test_training_beats_chance(source):
    ft = tuner(mode="full", epochs=3).fit(source)
    assert ft.history_[0]["val_accuracy"] < 0.6  # random head: near chance (1/3)
    assert max(h["val_accuracy"] for h in ft.history_) >= 0.9
    assert ft.score("test") >= 0.75
    proba = ft.predict_proba("test")
    assert proba.shape == (12, 3) and np.allclose(proba.sum(1), 1, atol=1e-5)
    assert set(ft.history_[1]) >= {
        "train_loss",
        "val_loss",
        "val_accuracy",
        "lr",
        "seconds",
        "images_per_s",
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("full", Mode("full")),
        ("partial:2", Mode("partial", 2)),
        ("bn", Mode("bn")),
        ("head", Mode("head")),
        ("lpft", Mode("lpft")),
    ],
)
def test_mode_parse(text, expected):
    assert Mode.parse(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize("text", ["fulll", "partial", "partial:0", "partial:x", "bn:2"])
def test_unknown_mode_lists_valid_modes(text, source):
    with pytest.raises(ConfigError, match=r"Valid modes: full, partial:N, bn, head, lpft"):
        tuner(mode=text).fit(source)


def test_partial_beyond_stages_names_them(source):
    with pytest.raises(ConfigError, match=r"3: 0 stem, 1 stage1, 2 stage2"):
        tuner(mode="partial:4").fit(source)


def test_partial_freezes_a_stem_left_out_of_the_stages():
    model = get_backbone("toy").model
    frozen = freeze(model, Mode.parse("partial:1"), ["stage1", "stage2"], head="fc")
    assert {n.split(".")[0] for n in frozen.params} == {"stem", "stage1"}
    assert all(p.requires_grad for n, p in model.named_parameters() if n.startswith("stage2"))


@pytest.mark.parametrize(
    ("spec", "stem", "first_block"),
    [
        ("torchvision:resnet18@none", ["conv1", "bn1"], "layer1"),
        ("efficientnet_lite0@none", ["conv_stem", "bn1"], "blocks.0"),  # timm's EfficientNet
        ("torchvision:mobilenet_v3_small@none", ["features.0"], "features.1"),
    ],
)
def test_partial_1_freezes_the_whole_stem(spec, stem, first_block):
    # ResNet's stem used to be two stages (conv1, then bn1): partial:1 left bn1 training.
    b = get_backbone(spec)
    frozen = freeze(b.model, Mode.parse("partial:1"), b.stages, b.classifier)
    expected = [n for n, _ in b.model.named_parameters() if n.split(".")[0] in stem]
    if stem == ["features.0"]:
        expected = [n for n, _ in b.model.named_parameters() if n.startswith("features.0.")]
    assert sorted(frozen.params) == sorted(expected)
    assert [b.model.get_submodule(n) for n in stem] == frozen.eval_modules
    frozen2 = freeze(get_backbone(spec).model, Mode.parse("partial:2"), b.stages, b.classifier)
    blocks = {n for n in frozen2.params if n not in expected}
    assert blocks and all(n.startswith(first_block + ".") for n in blocks)


def _tiny_vits():
    import timm
    from torchvision.models import VisionTransformer

    from featpipe.backbones.timm_models import make_backbone
    from featpipe.backbones.torchvision_models import _containers
    from featpipe.backbones.weights import stages_of

    timm_vit = timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2
    )
    tv_vit = VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64
    )
    tv_stages = stages_of(tv_vit, _containers(tv_vit), exclude="heads.head")
    return [
        (timm_vit, make_backbone("timm:vit", timm_vit).stages, "head"),
        (tv_vit, tv_stages, "heads.head"),
    ]


def test_partial_freezes_a_vit_stem_with_its_tokens():
    # The class token and position embedding are parameters of the model (or the encoder)
    # itself, outside any stage module: they used to train under every partial:N.
    (timm_vit, timm_stages, timm_head), (tv_vit, tv_stages, tv_head) = _tiny_vits()
    assert timm_stages == [
        ("cls_token", "pos_embed", "patch_embed"), ("blocks.0",), ("blocks.1", "norm")
    ]  # fmt: skip
    assert tv_stages == [
        ("class_token", "conv_proj", "encoder.pos_embedding"),
        ("encoder.layers.encoder_layer_0",),
        ("encoder.layers.encoder_layer_1", "encoder.ln"),
    ]
    for model, stages, head, stem in (
        (timm_vit, timm_stages, timm_head, ("cls_token", "pos_embed", "patch_embed.")),
        (tv_vit, tv_stages, tv_head, ("class_token", "conv_proj.", "encoder.pos_embedding")),
    ):
        frozen = freeze(model, Mode.parse("partial:1"), stages, head)
        assert sorted(frozen.params) == sorted(
            n for n, _ in model.named_parameters() if n.startswith(stem)
        )
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        assert trainable and not any(n.startswith(stem) for n in trainable)
        freeze(model, Mode.parse("partial:3"), stages, head)
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        assert {n.rsplit(".", 1)[0] for n in trainable} == {head}


def _frozen_expectation(mode: str, name: str) -> bool:
    """Whether backbone state entry ``name`` (a parameter or BN buffer) must stay unchanged."""
    stage = name.split(".")[0]
    is_bn = name.split(".")[1] == "1"  # toy stages are Sequential(conv, bn, relu)
    return {
        "full": False,
        "partial:1": stage == "stem",
        "partial:2": stage in ("stem", "stage1"),
        "bn": is_bn,
        "head": True,
    }[mode]


@pytest.mark.parametrize("mode", ["full", "partial:1", "partial:2", "bn", "head"])
def test_mode_freezes_exactly_what_it_says(mode, source):
    before = get_backbone("toy").model.state_dict()
    snaps = Snapshots()
    ft = tuner(mode=mode, epochs=1, callbacks=[snaps]).fit(source)
    after = snaps.states[1]  # the trained epoch, whether or not it was selected
    for name, value in before.items():
        if name.startswith("fc.") or name.endswith("num_batches_tracked"):
            continue
        if _frozen_expectation(mode, name):
            assert torch.equal(after[name], value), f"{mode}: {name} changed"
        elif not name.endswith(".0.bias"):  # a conv bias before batch norm gets zero gradient
            assert not torch.equal(after[name], value), f"{mode}: {name} did not train"
    assert not torch.equal(after["fc.1.weight"], snaps.states[0]["fc.1.weight"])  # head trains
    n_trainable = sum(v.numel() for k, v in ft.model_.named_parameters() if v.requires_grad)
    assert ft.trainable_params_ == n_trainable


def test_lpft_starts_where_the_probe_ends():
    # Weak signal so that the probe is not perfect and the comparison means something.
    rng = np.random.default_rng(1)
    n = 150
    labels = np.arange(n) % 3
    images = rng.integers(0, 200, (n, 24, 24, 3), dtype=np.uint8)
    images[np.arange(n), :, :, labels] += 25
    src = ArraySource(images, labels, splits=["train"] * 90 + ["val"] * 60)
    ft = tuner(mode="lpft", epochs=1, probe_C=1.0).fit(src)
    start = ft.history_[0]
    assert start["epoch"] == 0 and start["probe"]["C"] == 1.0
    assert 0.4 < ft.probe_["val_accuracy"] < 1.0
    assert abs(start["val_accuracy"] - ft.probe_["val_accuracy"]) <= 0.005


def test_early_stopping_keeps_the_best_validation_epoch(source, monkeypatch):
    scripted = iter([0.2, 0.5, 0.8, 0.6, 0.7, 0.95, 0.99])  # best at epoch 2, then 2 worse
    monkeypatch.setattr(
        FineTuner, "_validate", lambda self: {"val_loss": 1.0, "val_accuracy": next(scripted)}
    )
    snaps = Snapshots()
    ft = tuner(epochs=6, patience=2, callbacks=[snaps]).fit(source)
    assert [h["epoch"] for h in ft.history_] == [0, 1, 2, 3, 4]
    assert ft.best_epoch_ == 2
    final = ft.model_.state_dict()
    assert all(torch.equal(final[k], v) for k, v in snaps.states[2].items())
    assert not torch.equal(final["fc.1.weight"], snaps.states[4]["fc.1.weight"])


def no_val_source() -> ArraySource:
    """The synthetic source with its val rows made train: val must be carved."""
    src = synthetic_source()
    return ArraySource(
        np.stack([np.asarray(src.load(i)) for i in range(len(src))]),
        src.labels,
        splits=np.where(src.splits == 1, 0, src.splits),
    )


def test_val_is_carved_from_train_when_missing():
    no_val = no_val_source()
    ft = tuner(epochs=1, val_fraction=0.25).fit(no_val)
    assert ft.history_[0]["val_split"].startswith("carved 0.25 of train")
    counts = np.bincount(no_val.labels[ft.val_rows_], minlength=3)
    assert counts.sum() == 15 and counts.min() == 5  # stratified: 5 per class of 60 train rows


def test_a_val_fraction_that_carves_no_val_row_says_so():
    images = np.random.default_rng(0).integers(0, 255, (12, 8, 8, 3), dtype=np.uint8)
    small = ArraySource(images, np.arange(12) % 3, splits=["train"] * 9 + ["test"] * 3)
    match = r"val_fraction=0.05 of its 9 train rows carves no val row.*at least 0.06"
    with pytest.raises(ConfigError, match=match):
        tuner(epochs=1, batch_size=4, val_fraction=0.05).fit(small)
    assert len(tuner(epochs=0, batch_size=4, val_fraction=0.06).fit(small).val_rows_) == 1


def test_split_names_mean_the_rows_trained_and_chosen_on_when_val_is_carved():
    source = no_val_source()
    ft = tuner(epochs=0, val_fraction=0.25).fit(source)
    assert len(ft.val_rows_) == 15
    assert ft.predict("val").shape == (15,) and ft.predict_proba("train").shape == (45, 3)
    chosen_on = ft.history_[ft.best_epoch_]["val_accuracy"]
    assert ft.score("val") == pytest.approx(chosen_on)
    assert ft.evaluate("val", n_boot=0)["top1"] == pytest.approx(chosen_on)
    assert ft.predict("test").shape == (12,)
    trained_on = np.setdiff1d(source.indices("train"), ft.val_rows_)
    np.testing.assert_array_equal(ft.train_rows_, trained_on)


def test_same_seed_same_weights_on_cpu(source):
    a = tuner(epochs=1).fit(source).model_.state_dict()
    b = tuner(epochs=1).fit(source).model_.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_loader_workers_change_no_weights(source, tmp_path):
    # `workers` is a NOT_RESULT_PARAM: left out of config hashes, changeable on resume.
    def weights(ft):
        return ft.model_.state_dict()

    alone = weights(tuner(epochs=2, workers=0).fit(source))
    for workers in (1, 2):
        other = weights(tuner(epochs=2, workers=workers).fit(source))
        assert all(torch.equal(alone[k], other[k]) for k in alone), workers
    with pytest.raises(KeyboardInterrupt):
        tuner(epochs=2, run_dir=tmp_path, callbacks=[StopAfter(1)]).fit(source)
    resumed = tuner(epochs=2, workers=1, run_dir=tmp_path).fit(source)
    assert resumed.start_epoch_ == 1
    assert all(torch.equal(alone[k], weights(resumed)[k]) for k in alone)


def test_run_dir_files_and_config_mismatch(source, tmp_path):
    ft = tuner(epochs=2, run_dir=tmp_path).fit(source)
    rows = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2] and rows == ft.history_
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert last["epoch"] == 2 and set(last["rng"]) >= {"torch", "numpy", "python", "loader"}
    best = checkpoint.load(tmp_path / "best.pt")
    assert best["epoch"] == ft.best_epoch_
    assert not list(tmp_path.glob("*.tmp"))
    # A finished run resumes to the same result without training again.
    again = tuner(epochs=2, run_dir=tmp_path).fit(source)
    assert again.history_ == ft.history_
    with pytest.raises(ConfigError, match=r"lr: checkpoint 0.05, now 0.1"):
        tuner(epochs=2, lr=0.1, run_dir=tmp_path).fit(source)
    tuner(epochs=1, lr=0.1, run_dir=tmp_path, resume=False).fit(source)  # starts over


def test_a_run_folder_that_cannot_resume_says_how_to_start_over(source, tmp_path):
    tuner(epochs=1, run_dir=tmp_path).fit(source)
    last = (tmp_path / "last.pt").read_bytes()
    start_over = r"resume=False \(CLI: --no-resume\), or delete the run folder"
    (tmp_path / "best.pt").unlink()
    with pytest.raises(ConfigError, match=rf"best\.pt is missing .*{start_over}"):
        tuner(epochs=1, run_dir=tmp_path).fit(source)
    for damaged in (b"not a checkpoint", b"", last[: len(last) // 2], _saved({"x": 1})):
        (tmp_path / "last.pt").write_bytes(damaged)
        with pytest.raises(ConfigError, match=rf"last\.pt is damaged or not .*{start_over}"):
            tuner(epochs=1, run_dir=tmp_path).fit(source)
    assert tuner(epochs=1, run_dir=tmp_path, resume=False).fit(source).history_[-1]["epoch"] == 1


def _saved(state) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


@pytest.mark.slow
def test_killed_run_resumes_to_identical_weights(tmp_path):
    run = [sys.executable, str(CHILD)]
    subprocess.run([*run, tmp_path / "a", tmp_path / "a.pt"], check=True, timeout=120)
    # Loads: epoch 0 validates (N_VAL); each epoch trains (N_TRAIN) and validates (N_VAL).
    kill_at = N_VAL + (N_TRAIN + N_VAL) + N_TRAIN // 2  # half-way through epoch 2's training
    killed = subprocess.run([*run, tmp_path / "b", tmp_path / "b.pt", str(kill_at)], timeout=120)
    assert killed.returncode == -9
    assert checkpoint.load(tmp_path / "b" / "last.pt")["epoch"] == 1
    assert not (tmp_path / "b.pt").exists()
    subprocess.run([*run, tmp_path / "b", tmp_path / "b.pt"], check=True, timeout=120)
    a, b = torch.load(tmp_path / "a.pt"), torch.load(tmp_path / "b.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert N_TRAIN % BATCH == 0  # the kill arithmetic assumes whole batches


def test_param_groups_and_schedule():
    model = get_backbone("toy").model
    groups = {g["name"]: g for g in param_groups(model, "fc", 0.1, 0.01, 1e-4)}
    assert set(groups) == {"head", "head_no_decay", "backbone", "backbone_no_decay"}
    assert groups["head"]["lr"] == 0.1 and math.isclose(groups["backbone"]["lr"], 0.01)
    assert groups["backbone_no_decay"]["weight_decay"] == 0.0
    assert all(p.ndim <= 1 for p in groups["backbone_no_decay"]["params"])
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = warmup_cosine(opt, warmup_steps=4, total_steps=12)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert lrs[4] == 1.0 and all(a > b for a, b in itertools.pairwise(lrs[4:]))


def test_predict_needs_fit_and_a_source(source):
    with pytest.raises(NotFittedError):
        tuner().predict("test")
    ft = tuner(epochs=1).fit(source)
    with pytest.raises(ConfigError, match="ImageSource or a split name"):
        ft.predict(np.zeros((2, 3)))
    assert ft.predict(source).shape == (len(source),)
    other = ArraySource(np.zeros((2, 8, 8, 3), np.uint8), ["a", "b"])
    with pytest.raises(HeadMismatchError, match="same class list"):
        ft.predict(other)


def test_cli_finetune_writes_run_folder(split_image_folder, tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = "finetune --backbone toy --mode lpft --epochs 2 --batch-size 4 --no-progress"
    code = cli_main([*args.split(), "--data", str(split_image_folder), "--run-dir", str(run_dir)])
    assert code == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "epoch   2/2" in out
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0 <= metrics["test"]["top1"] <= 1 and metrics["probe"]["C"] > 0
    assert json.loads((run_dir / "config.json").read_text())["mode"] == "lpft"
    assert {"history.jsonl", "best.pt", "last.pt"} <= {p.name for p in run_dir.iterdir()}
    # the same result row `featpipe run` writes, so `featpipe report` works on the folder
    (row,) = read_results(run_dir / "results.jsonl")
    assert row["kind"] == "finetune" and row["method"] == "toy/finetune:lpft"
    assert row["metrics"] == metrics["test"] and row["history"]
    assert cli_main(["report", str(run_dir)]) == 0
    assert "| fine-tuning (lpft) | 0 |" in (run_dir / "report.md").read_text()


def test_train_transform_keeps_crop_size_and_normalisation():
    pre = Preprocessing(resize=36, crop=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    image = Image.fromarray(np.full((16, 20, 3), 255, np.uint8))
    out = train_transform(pre, "standard")(image)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert torch.allclose(out, torch.ones_like(out))  # white stays (1 - 0.5) / 0.5 after crops
    assert torch.equal(train_transform(pre, "none")(image), pre.transform()(image))
    with pytest.raises(ConfigError, match="Valid: standard, none"):
        train_transform(pre, "heavy")


def test_lpft_trains_every_parameter_under_fixed_batch_norm_statistics(source):
    # The probe was fitted on eval-mode features; batch statistics of the new images would
    # change those features at the first step (on real data LP-FT then diverged).
    before = get_backbone("toy").model.state_dict()
    snaps = Snapshots()
    tuner(mode="lpft", epochs=1, callbacks=[snaps]).fit(source)
    after = snaps.states[1]
    for name, value in before.items():
        if name.startswith("fc.") or name.endswith(("num_batches_tracked", ".0.bias")):
            continue
        if name.endswith(("running_mean", "running_var")):
            assert torch.equal(after[name], value), f"{name} changed"
        else:
            assert not torch.equal(after[name], value), f"{name} did not train"


def test_lpft_probe_holds_the_binary_fit_with_the_same_probabilities():
    # Two classes come back in scikit-learn's one-row layout; the two-output head must give
    # the probabilities of the fitted logistic regression, at scikit-learn's meaning of C.
    X, y = make_classification(120, 6, random_state=0)
    tensors, _ = probe.fit_probe((X[:80], y[:80]), (X[80:], y[80:]), 2, 1.0, "cpu")
    head = nn.Sequential(probe.Standardize(6), nn.Linear(6, 2))
    probe.load_into(head, tensors)
    with torch.no_grad():
        p_head = torch.softmax(head(torch.as_tensor(X[80:], dtype=torch.float32)), 1).numpy()
    mean, std = tensors["mean"].numpy(), tensors["std"].numpy()
    ref = LogisticRegression(C=1.0, tol=1e-10).fit((X[:80] - mean) / std, y[:80])
    np.testing.assert_allclose(p_head, ref.predict_proba((X[80:] - mean) / std), atol=1e-3)


class CountingForward:
    """Registers backbone ``counting_toy``: the toy backbone counting the images its forward
    pass sees."""

    def __init__(self):
        self.images = 0

    def build(self, spec):
        bb = build_toy(spec)
        bb.model.register_forward_pre_hook(lambda _m, inp: self.count(inp[0]))
        return bb

    def count(self, x: torch.Tensor) -> None:
        self.images += x.shape[0]


@pytest.fixture
def counting_toy():
    counter = CountingForward()
    register_backbone("counting_toy")(counter.build)
    yield counter
    unregister_backbone("counting_toy")


def lpft_start(source, counter, **fit) -> tuple[dict, dict, int]:
    """(probe summary, head tensors at epoch 0, images through the backbone during fit)."""
    snaps, before = Snapshots(), counter.images
    ft = FineTuner(
        "counting_toy",
        mode="lpft",
        epochs=1,
        batch_size=8,
        probe_C=1.0,
        patience=None,
        verbose=0,
        callbacks=[snaps],
    ).fit(source, **fit)
    head = {k: v for k, v in snaps.states[0].items() if k.startswith("fc.")}
    return ft.probe_, head, counter.images - before


def test_lpft_probe_reads_a_stored_pooled_layer_instead_of_computing_it(counting_toy, tmp_path):
    src = synthetic_source()
    opts = dict(dtype="float32", device="cpu", workers=0, progress=False)
    store = extract(src, "counting_toy", ["pooled", "stage1"], out=tmp_path / "s.h5", **opts)
    computed, head, images = lpft_start(src, counting_toy)
    reused, reused_head, reused_images = lpft_start(src, counting_toy, probe_features=store)
    assert images - reused_images == N_TRAIN + N_VAL  # the probe's forward pass, not run
    assert reused["features"] == str(store.path) and "features" not in computed
    assert reused["C"] == computed["C"]
    assert abs(reused["val_accuracy"] - computed["val_accuracy"]) < 1e-9
    for name, value in head.items():  # the same probe, up to float rounding
        torch.testing.assert_close(reused_head[name], value, atol=1e-5, rtol=1e-5)


def test_lpft_refuses_a_store_of_other_features(tmp_path):
    src = synthetic_source()
    opts = dict(device="cpu", workers=0, progress=False)
    resized = extract(src, "toy", out=tmp_path / "a.h5", image_size=40, **opts)
    with pytest.raises(StoreMismatchError, match=r"backbone preprocessing .*image size"):
        tuner(mode="lpft", epochs=1).fit(src, probe_features=resized)
    others = extract(synthetic_source(seed=1), "toy", out=tmp_path / "b.h5", **opts)
    with pytest.raises(StoreMismatchError, match="extracted from other images"):
        tuner(mode="lpft", epochs=1).fit(src, probe_features=others)
    no_pooled = extract(src, "toy", ["stage1"], out=tmp_path / "c.h5", **opts)
    with pytest.raises(StoreMismatchError, match="no 'pooled' layer"):
        tuner(mode="lpft", epochs=1).fit(src, probe_features=no_pooled)


class SlowSource(ImageSource):
    """Delegates to ``parent``; every image takes at least ``delay`` seconds to load."""

    def __init__(self, parent: ImageSource, delay: float):
        self.parent, self.delay = parent, delay
        self.classes, self.ids = parent.classes, parent.ids
        self.labels, self.splits = parent.labels, parent.splits

    def load(self, index: int):
        time.sleep(self.delay)
        return self.parent.load(index)

    def _fingerprint_parts(self, content: bool):
        return self.parent._fingerprint_parts(content)


class StopAfter(Callback):
    """Ctrl-C at the end of epoch ``epoch``, after the checkpoint callbacks ran."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_end(self, tuner, logs):
        if logs["epoch"] == self.epoch:
            raise KeyboardInterrupt


def test_a_resumed_fp16_run_continues_its_loss_scale(source, tmp_path, monkeypatch):
    # fp16 (GPUs without bf16) scales the loss by a factor that grows while steps stay finite;
    # a resume that restarted it would no longer match the uninterrupted run. A CPU scaler
    # stands in for the CUDA one: the same state, growing every 2 finite steps here.
    real = torch.amp.GradScaler

    def cpu_scaler(device, enabled):
        return real("cpu", init_scale=2.0**4, growth_interval=2)

    monkeypatch.setattr(torch.amp, "GradScaler", cpu_scaler)
    whole = tuner(epochs=2).fit(source)
    with pytest.raises(KeyboardInterrupt):
        tuner(epochs=2, run_dir=tmp_path, callbacks=[StopAfter(1)]).fit(source)
    resumed = tuner(epochs=2, run_dir=tmp_path).fit(source)
    assert resumed.start_epoch_ == 1 and whole.scaler_.get_scale() > 2.0**4
    assert resumed.scaler_.state_dict() == whole.scaler_.state_dict()


def test_a_resumed_fine_tune_counts_the_time_of_every_epoch(tmp_path):
    # fit_seconds used to be the wall time of the last (resumed) piece only.
    first = tuner(epochs=2, run_dir=tmp_path, callbacks=[StopAfter(1)])
    with pytest.raises(KeyboardInterrupt, match=r"^interrupted: epoch 1 of 2 done; run the same"):
        first.fit(SlowSource(synthetic_source(), delay=0.01))  # epoch 1 alone takes > 0.6 s
    saved = checkpoint.load(tmp_path / "last.pt")["fit_seconds"]
    assert saved == first.fit_seconds_ >= first.history_[1]["seconds"]
    start = time.perf_counter()
    ft = tuner(epochs=2, run_dir=tmp_path).fit(synthetic_source())
    wall = time.perf_counter() - start
    print(f"first piece {saved:.2f} s, resumed piece {wall:.2f} s, total {ft.fit_seconds_:.2f} s")
    assert ft.start_epoch_ == 1 and [h["epoch"] for h in ft.history_] == [0, 1, 2]
    assert saved <= ft.fit_seconds_ <= saved + wall
    assert ft.fit_seconds_ >= sum(h["seconds"] for h in ft.history_[1:])


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_the_checkpoint_waits_until_the_epoch_is_saved(
    signum, tmp_path, monkeypatch
):
    # A signal between best.pt and last.pt used to leave a best.pt newer than last.pt.
    save = checkpoint.save

    def save_and_signal(path, state):
        if state["epoch"] == 1 and not (tmp_path / "signalled").exists():
            (tmp_path / "signalled").touch()
            os.kill(os.getpid(), signum)
        save(path, state)

    monkeypatch.setattr(checkpoint, "save", save_and_signal)
    with handle_sigterm(), pytest.raises(KeyboardInterrupt, match="epoch 1 of 3 done") as stop:
        tuner(epochs=3, run_dir=tmp_path).fit(synthetic_source())
    assert stop.value.exit_code == 128 + signum
    last = checkpoint.load(tmp_path / "last.pt")
    assert last["epoch"] == 1 and len(last["history"]) == 2
    assert checkpoint.load(tmp_path / "best.pt")["epoch"] == last["best_epoch"]
    assert len((tmp_path / "history.jsonl").read_text().splitlines()) == 2
    assert not list(tmp_path.glob("*.tmp"))


def test_deferred_delivers_held_signals_after_the_block():
    done = []
    with handle_sigterm(), pytest.raises(Interrupted) as stop, deferred():
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        done.append("block")
    assert done == ["block"] and stop.value.signum in (signal.SIGTERM, signal.SIGINT)


@pytest.fixture
def fewer_gpus(monkeypatch) -> list[int]:
    """torch.cuda sees 2 devices; returns the indices whose RNG state was set."""
    restored = []

    def set_rng_state(state, device=0):
        if int(device) >= 2:
            raise IndexError(f"device {device} of 2")  # what CUDA does
        restored.append(int(device))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    monkeypatch.setattr(torch.cuda.random, "set_rng_state", set_rng_state)
    return restored


def test_rng_states_of_gpus_this_machine_lacks_are_skipped(fewer_gpus, monkeypatch):
    # A checkpoint saved with 8 visible GPUs raised IndexError when resumed with fewer.
    generator = torch.Generator()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    state = checkpoint.rng_state(generator)
    state["cuda"] = [torch.zeros(16, dtype=torch.uint8)] * 8
    checkpoint.set_rng_state(state, generator)  # on CPU: nothing to restore
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    checkpoint.set_rng_state(state, generator)
    assert fewer_gpus == [0, 1]


def test_a_checkpoint_from_a_cuda_machine_resumes_on_cpu(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        tuner(epochs=2, run_dir=tmp_path, callbacks=[StopAfter(1)]).fit(synthetic_source())
    last = checkpoint.load(tmp_path / "last.pt")
    last["rng"]["cuda"] = [torch.zeros(16, dtype=torch.uint8)] * 8  # saved with 8 GPUs
    checkpoint.save(tmp_path / "last.pt", last)
    ft = tuner(epochs=2, run_dir=tmp_path, device="cpu").fit(synthetic_source())
    assert ft.start_epoch_ == 1 and ft.history_[-1]["epoch"] == 2


@pytest.mark.slow  # two processes: about 20 s each on a loaded 2-core CPU
@pytest.mark.parametrize(
    ("signum", "workers"),
    [(signal.SIGTERM, 0), (signal.SIGINT, 2)],  # a scheduler's SIGTERM; Ctrl-C with workers
)
def test_cli_finetune_interrupted_leaves_a_resumable_run(
    split_image_folder, tmp_path, signum, workers
):
    run_dir = tmp_path / "run"
    args = "finetune --backbone toy --epochs 3 --batch-size 4 --patience 0 --no-progress"
    command = [sys.executable, str(CHILD), "cli", "0.03", *args.split(), "--workers", str(workers)]
    command += ["--data", str(split_image_folder), "--run-dir", str(run_dir)]
    child = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, which Ctrl-C signals as a whole
    )
    history = run_dir / "history.jsonl"
    deadline = time.monotonic() + 60
    while not (history.exists() and len(history.read_text().splitlines()) >= 2):
        assert child.poll() is None and time.monotonic() < deadline, child.communicate()
        time.sleep(0.05)
    os.killpg(child.pid, signum)  # inside epoch 2 (each epoch loads 24 images: > 0.7 s)
    _, err = child.communicate(timeout=60)
    done = checkpoint.load(run_dir / "last.pt")["epoch"]
    assert child.returncode == 128 + signum, err
    assert err.strip().splitlines()[-1] == (
        f"featpipe finetune: interrupted: epoch {done} of 3 done; run the same command to resume"
    )
    assert "Traceback" not in err and not list(run_dir.glob("*.tmp"))
    assert len(history.read_text().splitlines()) == done + 1
    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert f"resumed from epoch {done}" in again.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    rows = [json.loads(line) for line in history.read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    assert metrics["fit_seconds"] >= sum(r["seconds"] for r in rows[1:])  # every piece counted


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class CurrentDevice(Callback):
    """Records the current CUDA device at the end of every epoch."""

    def __init__(self):
        self.seen = []

    def on_epoch_end(self, tuner, logs):
        self.seen.append(torch.cuda.current_device())


@pytest.mark.gpu
@needs_cuda
def test_cuda_fine_tune_runs_on_its_device_and_resumes_at_its_precision_only(tmp_path):
    last = torch.cuda.device_count() - 1
    seen = CurrentDevice()
    with pytest.raises(KeyboardInterrupt, match="epoch 1 of 2 done"):
        tuner(
            epochs=2, run_dir=tmp_path, device=f"cuda:{last}", callbacks=[seen, StopAfter(1)]
        ).fit(synthetic_source())
    assert seen.seen == [last, last] and torch.cuda.current_device() == 0
    assert len(checkpoint.load(tmp_path / "last.pt")["rng"]["cuda"]) == torch.cuda.device_count()
    # Its epochs ran under bf16 (or fp16) autocast: the CPU's fp32 would mix two precisions.
    with pytest.raises(ConfigError, match=r"precision: trained at (bf16|fp16), this fit .* fp32"):
        tuner(epochs=2, run_dir=tmp_path, device="cpu").fit(synthetic_source())
    ft = tuner(epochs=2, run_dir=tmp_path, device="cuda:0").fit(synthetic_source())
    assert ft.start_epoch_ == 1 and ft.history_[-1]["epoch"] == 2
    assert ft.fit_seconds_ >= sum(h["seconds"] for h in ft.history_[1:])


class DiskFull(OSError):
    pass


def test_a_crash_between_best_and_last_leaves_them_agreeing(tmp_path, monkeypatch):
    # A failed last.pt write (full disk, kill) after best.pt used to leave best.pt holding a
    # newer epoch than the best_epoch last.pt names; a resume whose replayed epoch was not
    # the best again (GPU nondeterminism) then reported those weights as another epoch's.
    save = checkpoint.save

    def full_at_epoch_1(path, state):
        if Path(path).name == checkpoint.LAST and state["epoch"] == 1:
            raise DiskFull("No space left on device")
        save(path, state)

    monkeypatch.setattr(checkpoint, "save", full_at_epoch_1)
    with pytest.raises(DiskFull):
        tuner(epochs=2, run_dir=tmp_path).fit(synthetic_source())
    monkeypatch.setattr(checkpoint, "save", save)
    last = checkpoint.load(tmp_path / "last.pt")
    assert last["epoch"] == 0
    assert checkpoint.load(tmp_path / "best.pt")["epoch"] == last["best_epoch"] == 0
    resumed = tuner(epochs=2, run_dir=tmp_path).fit(synthetic_source())
    assert resumed.start_epoch_ == 0 and not (tmp_path / checkpoint.PENDING).exists()
    assert checkpoint.load(tmp_path / "best.pt")["epoch"] == resumed.best_epoch_


def test_a_crash_after_last_promotes_the_waiting_best_on_resume(tmp_path, monkeypatch):
    # last.pt written, best.pt.next not yet renamed: last.pt names the waiting file's epoch.
    replace = os.replace

    def killed(src, dst):
        if Path(src).name == checkpoint.PENDING:
            raise DiskFull("killed before the rename")
        replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", killed)
    with pytest.raises(DiskFull):
        tuner(epochs=1, run_dir=tmp_path).fit(synthetic_source())
    monkeypatch.undo()
    assert not (tmp_path / "best.pt").exists() and (tmp_path / checkpoint.PENDING).exists()
    resumed = tuner(epochs=1, run_dir=tmp_path).fit(synthetic_source())
    assert resumed.start_epoch_ == 0 and not (tmp_path / checkpoint.PENDING).exists()
    best = checkpoint.load(tmp_path / "best.pt")
    assert best["epoch"] == resumed.best_epoch_
    assert all(torch.equal(best["model"][k], v) for k, v in resumed._best_weights.items())


def test_a_rank_that_does_not_see_rank_0s_checkpoint_is_refused(source, tmp_path, monkeypatch):
    # Ranks decided alone whether to resume: with run_dir on a disk only rank 0 sees, rank 0
    # resumed at epoch K and the others started at 0, and their collectives hung until the
    # process group's timeout. Rank 0 now decides; a rank that disagrees stops at once.
    from featpipe.finetune import ddp

    def rank_0_finds_it(value):
        return True if isinstance(value, bool) else value

    monkeypatch.setattr(ddp, "from_main", rank_0_finds_it)
    monkeypatch.setattr(ddp, "rank", lambda: 1)
    with pytest.raises(ConfigError, match=r"Rank 1 does not find .*last\.pt, which rank 0 resumes"):
        tuner(epochs=1, run_dir=tmp_path / "not-shared").fit(source)


def test_pooled_features_of_an_empty_share_keep_their_width():
    # A DDP rank whose share of a small split is empty: np.concatenate([]) raised.
    bb = get_backbone("toy")
    X, y = probe.pooled_features(bb, [], torch.device("cpu"))
    images = torch.zeros(2, 3, bb.preprocessing.crop, bb.preprocessing.crop)
    full, _ = probe.pooled_features(bb, [(images, torch.zeros(2))], torch.device("cpu"))
    assert X.shape == (0, full.shape[1]) and X.dtype == full.dtype and y.shape == (0,)
