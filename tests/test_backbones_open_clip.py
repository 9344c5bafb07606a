"""``open_clip:`` backbones on a tiny random OpenCLIP model built from a small config and saved
to a checkpoint (nothing is downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

open_clip = pytest.importorskip("open_clip")

from featpipe.backbones import get_backbone  # noqa: E402
from featpipe.backbones.open_clip_models import _tag_file  # noqa: E402
from featpipe.backbones.weights import WeightsUnavailableError  # noqa: E402
from featpipe.cli import main  # noqa: E402
from featpipe.errors import ConfigError  # noqa: E402

NAME = "featpipe-tiny-vit"
CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 8, "vocab_size": 100, "width": 16, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """A checkpoint of a tiny ViT OpenCLIP model registered as ``featpipe-tiny-vit``."""
    root = tmp_path_factory.mktemp("open_clip")
    (root / f"{NAME}.json").write_text(json.dumps(CONFIG))
    open_clip.add_model_config(root / f"{NAME}.json")
    torch.manual_seed(3)
    model = open_clip.create_model(NAME, load_weights=False).eval()
    path = root / "open_clip_pytorch_model.bin"
    torch.save(model.state_dict(), path)
    return path, model


def test_checkpoint_embedding_preprocessing_and_stages(checkpoint):
    path, model = checkpoint
    bb = get_backbone(f"open_clip:{NAME}@{path}")
    assert bb.spec == f"open_clip:{NAME}@{path.resolve()}"
    pre = bb.preprocessing
    assert (pre.resize, pre.crop, pre.interpolation) == (32, 32, "bicubic")
    assert pre.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    feats = bb.features(["pooled", "visual.transformer.resblocks.1", "visual.ln_post"])
    got = feats(x)
    with torch.inference_mode():
        torch.testing.assert_close(got["pooled"], model.encode_image(x))
    assert feats.poolings["visual.transformer.resblocks.1"] == "cls"
    assert got["visual.transformer.resblocks.1"].shape == (2, 32)
    # the output projection is a parameter registered ahead of the blocks, but acts last
    assert bb.stages[0] == ("visual.class_embedding", "visual.positional_embedding",
                            "visual.conv1", "visual.ln_pre")  # fmt: skip
    assert bb.stages[-1] == ("visual.transformer.resblocks.1", "visual.ln_post", "visual.proj")
    assert not any(n.startswith("text") for n, _ in bb.model.named_parameters())


def test_layers_cli(checkpoint, capsys):
    path, _ = checkpoint
    code = main(["layers", f"open_clip:{NAME}@{path}", "--filter", "resblocks.0"])
    out = capsys.readouterr().out
    assert code == 0
    row = next(ln.split() for ln in out.splitlines() if ln.startswith("visual.transformer."))
    assert row == ["visual.transformer.resblocks.0", "17×32", "cls", "32"]


def test_random_init_is_seeded_and_other_sizes_are_refused(checkpoint):
    a, b = get_backbone(f"open_clip:{NAME}"), get_backbone(f"open_clip:{NAME}@none")
    assert a.weights_sha256 == b.weights_sha256
    with pytest.raises(ConfigError, match="accepts 32×32 inputs only"):
        get_backbone(f"open_clip:{NAME}", image_size=64)


def test_unknown_tag_and_missing_file(checkpoint, tmp_path):
    with pytest.raises(ConfigError, match=r"Unknown pretrained tag for open_clip:ViT-B-32"):
        get_backbone("open_clip:ViT-B-32@no_such_tag")
    with pytest.raises(ConfigError, match="does not exist"):
        get_backbone(f"open_clip:{NAME}@{tmp_path / 'missing.bin'}")


def test_a_tag_resolves_from_the_hub_cache_or_fails_fast_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = {"hf_hub": "org/tiny-clip/", "url": ""}
    with pytest.raises(WeightsUnavailableError, match="hf download org/tiny-clip"):
        _tag_file(NAME, "tiny", cfg)
    snap = tmp_path / "models--org--tiny-clip" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("0" * 40)
    (snap / "open_clip_pytorch_model.bin").write_bytes(b"weights")
    assert _tag_file(NAME, "tiny", cfg) == snap / "open_clip_pytorch_model.bin"
