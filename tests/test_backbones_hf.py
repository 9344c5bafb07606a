"""``hf:`` backbones on tiny random transformers models saved locally (nothing is downloaded),
and the offline-first hub rule shared with ``timm:...@pretrained``."""

from __future__ import annotations

import shutil
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from featpipe.backbones import get_backbone  # noqa: E402
from featpipe.backbones.weights import WeightsUnavailableError  # noqa: E402
from featpipe.cli import main  # noqa: E402
from featpipe.data import ImageFolderSource  # noqa: E402
from featpipe.errors import ConfigError, MissingExtraError  # noqa: E402
from featpipe.extract import extract  # noqa: E402
from featpipe.finetune import FineTuner  # noqa: E402

VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
PROCESSOR = dict(
    size={"shortest_edge": 36},
    crop_size={"height": 32, "width": 32},
    do_center_crop=True,
    resample=3,  # bicubic
    image_mean=[0.5, 0.4, 0.3],
    image_std=[0.2, 0.25, 0.3],
)


def _save(model, folder: Path) -> str:
    model.save_pretrained(folder)
    transformers.BitImageProcessor(**PROCESSOR).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, str]:
    """Folders of tiny random DINOv2, ConvNeXt, CLIP and SigLIP models (seed 0)."""
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    t = transformers
    clip_text = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
    clip_text.update(intermediate_size=32, vocab_size=100, bos_token_id=0, eos_token_id=1)
    return {
        "dinov2": _save(
            t.Dinov2Model(t.Dinov2Config(**VIT, image_size=32, patch_size=8)), root / "dinov2"
        ),
        "convnext": _save(
            t.ConvNextModel(t.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2)),
            root / "convnext",
        ),
        "clip": _save(
            t.CLIPModel(
                t.CLIPConfig(
                    text_config=clip_text,
                    vision_config=dict(**VIT, image_size=32, patch_size=8),
                    projection_dim=24,
                )
            ),
            root / "clip",
        ),
        "siglip": _save(
            t.SiglipModel(
                t.SiglipConfig(
                    text_config=clip_text, vision_config=dict(**VIT, image_size=32, patch_size=8)
                )
            ),
            root / "siglip",
        ),
    }


def _pixels(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_dinov2_folder_layers_preprocessing_and_stages(tiny):
    bb = get_backbone(f"hf:{tiny['dinov2']}")
    assert bb.spec == f"hf:{Path(tiny['dinov2']).resolve()}"
    pre = bb.preprocessing
    assert (pre.resize, pre.crop, pre.interpolation) == (36, 32, "bicubic")
    assert pre.mean == (0.5, 0.4, 0.3) and pre.std == (0.2, 0.25, 0.3)
    # it centre-crops at (W - crop) // 2, as transformers does: part of the store key
    assert bb.identity()["preprocessing"]["crop_offset"] == "floor"
    assert bb.stages == [
        ("model.embeddings",),
        ("model.encoder.layer.0",),
        ("model.encoder.layer.1", "model.layernorm"),
    ]
    x = _pixels()
    feats = bb.features(["hidden_states.0", "hidden_states.2:mean", "pooled", "logits"])
    out = feats(x)
    ref = transformers.AutoModel.from_pretrained(tiny["dinov2"])(
        pixel_values=x, output_hidden_states=True
    )
    assert feats.poolings["hidden_states.0"] == "cls"  # DINOv2 has a class token
    torch.testing.assert_close(out["hidden_states.0"], ref.hidden_states[0][:, 0])
    torch.testing.assert_close(out["hidden_states.2:mean"], ref.hidden_states[2].mean(1))
    torch.testing.assert_close(out["pooled"], ref.pooler_output)  # the model's own pooler
    torch.testing.assert_close(out["logits"], out["pooled"])  # no classifier: the embedding


def test_convnext_stage_outputs_are_maps(tiny):
    bb = get_backbone(f"hf:{tiny['convnext']}")
    out = bb.features(["hidden_states.1", "hidden_states.2:grid:2", "pooled"])
    got = out(_pixels())
    assert out.poolings["hidden_states.1"] == "avg"
    assert got["hidden_states.1"].shape == (2, 8)
    assert got["hidden_states.2:grid:2"].shape == (2, 16 * 4)
    assert got["pooled"].shape == (2, 16)


def test_clip_keeps_the_vision_tower_and_its_projected_embedding(tiny):
    bb = get_backbone(f"hf:{tiny['clip']}")
    assert not any(n.startswith("text") for n, _ in bb.model.named_parameters())
    assert any(n.startswith("projection") for n, _ in bb.model.named_parameters())
    ref = transformers.CLIPModel.from_pretrained(tiny["clip"])
    x = _pixels()
    with torch.inference_mode():
        want = ref.visual_projection(ref.vision_model(pixel_values=x).pooler_output)
        got = bb.features(["pooled"])(x)["pooled"]
    torch.testing.assert_close(got, want)
    assert got.shape == (2, 24)


def test_siglip_tokens_default_to_mean_pooling(tiny):
    bb = get_backbone(f"hf:{tiny['siglip']}")
    assert bb.token_pooling == "mean"  # no class token to read
    feats = bb.features(["hidden_states.1", "pooled"])
    got = feats(_pixels())
    assert feats.poolings["hidden_states.1"] == "mean"
    assert got["pooled"].shape == (2, 32)


def test_layers_cli_lists_hidden_states_and_stages(tiny, capsys):
    code = main(["layers", f"hf:{tiny['dinov2']}", "--filter", "hidden_states"])
    out = capsys.readouterr().out
    assert code == 0
    rows = {ln.split()[0]: ln.split()[1:] for ln in out.splitlines() if ln.startswith("hidden")}
    assert rows["hidden_states.0"] == ["17×32", "cls", "32"]  # 4×4 patches + class token
    assert set(rows) == {"hidden_states.0", "hidden_states.1", "hidden_states.2"}
    assert "resize 36, centre crop 32, bicubic" in out
    assert "   1  model.encoder.layer.0" in out


def test_extract_to_a_store(tiny, image_folder, tmp_path):
    source = ImageFolderSource(image_folder, val_fraction=0.2, test_fraction=0.2, seed=0)
    spec = f"hf:{tiny['dinov2']}"
    store = extract(
        source,
        spec,
        ["pooled", "hidden_states.1:mean"],
        cache_dir=tmp_path,
        workers=0,
        device="cpu",
        progress=False,
        batch_size=4,
    )
    X, _ = store.arrays("pooled", split="train")
    assert X.shape[1] == 32 and np.isfinite(X).all()
    assert store.attrs["preprocessing"]["resize"] == 36  # recorded like any backbone's
    assert store.layer_info("hidden_states.1:mean")["dim"] == 32


def test_finetune_partial_freezes_the_embeddings_only(tiny, image_folder):
    source = ImageFolderSource(image_folder, val_fraction=0.2, test_fraction=0.2, seed=0)
    before = get_backbone(f"hf:{tiny['dinov2']}").model.state_dict()
    ft = FineTuner(
        f"hf:{tiny['dinov2']}", mode="partial:1", epochs=1, batch_size=4, lr=0.1,
        patience=None, verbose=0, device="cpu", dropout=0.0,
    ).fit(source)  # fmt: skip
    after = ft.model_.state_dict()
    assert ft.model_.head.weight.shape == (3, 32)  # the identity slot became a classifier
    frozen = [k for k in before if k.startswith("model.embeddings.")]
    trained = [k for k in before if k.startswith("model.encoder.layer.1.")]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in trained)
    assert ft.predict("test").shape == (len(source.indices("test")),)


def test_a_local_folder_takes_no_revision_and_needs_a_config(tiny, tmp_path):
    with pytest.raises(ConfigError, match="takes no '@' part"):
        get_backbone(f"hf:{tiny['dinov2']}@main")
    with pytest.raises(ConfigError, match=r"not a transformers model folder"):
        get_backbone(f"hf:{tmp_path}")


# ------------------------------------------------------------------ the hub cache, offline


def _cache(root: Path, repo: str, files: dict[str, Path]) -> None:
    """Lay out ``files`` as a snapshot of ``repo`` in a hub cache at ``root``."""
    folder = root / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snap = folder / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, src in files.items():
        shutil.copy(src, snap / name)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty hub cache, the network probe counted, offline mode off."""
    root = tmp_path / "hub"
    root.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    return root


@pytest.fixture
def probes(monkeypatch) -> list[str]:
    """Requests the hub probe makes (each fails, as on a machine without network)."""
    calls: list[str] = []

    def urlopen(request, timeout=None):
        calls.append(request.full_url)
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return calls


def test_repo_id_loads_from_the_cache_without_the_network(tiny, hub_cache, probes):
    folder = Path(tiny["dinov2"])
    _cache(hub_cache, "org/tiny-dinov2", {p.name: p for p in folder.iterdir()})
    bb = get_backbone("hf:org/tiny-dinov2")
    assert bb.spec == "hf:org/tiny-dinov2" and probes == []
    local = get_backbone(f"hf:{folder}")
    assert bb.weights_sha256 == local.weights_sha256


def test_not_cached_and_offline_fails_at_once_without_a_request(hub_cache, probes, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError) as err:
        get_backbone("hf:org/not-cached")
    msg = str(err.value)
    assert "HF_HUB_OFFLINE is set" in msg and "hf download org/not-cached" in msg
    assert "hf:/path/to/folder" in msg
    assert probes == []


def test_not_cached_and_hub_unreachable_fails_fast(hub_cache, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on port 9
    started = time.perf_counter()
    with pytest.raises(WeightsUnavailableError, match=r"127\.0\.0\.1:9 cannot be reached"):
        get_backbone("hf:org/not-cached")
    assert time.perf_counter() - started < 20  # huggingface_hub alone retries for ~45 s


def test_timm_pretrained_from_the_cache_offline(hub_cache, probes, monkeypatch, tmp_path):
    from safetensors.torch import save_file

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    weights = get_backbone("timm:test_vit@none").model.state_dict()
    weights = {k: v + 1.0 for k, v in weights.items()}  # not the random init
    file = tmp_path / "model.safetensors"
    save_file(weights, file)
    _cache(hub_cache, "timm/test_vit.r160_in1k", {"model.safetensors": file})
    bb = get_backbone("timm:test_vit@pretrained")
    loaded = bb.model.state_dict()
    assert all(torch.equal(loaded[k], weights[k]) for k in weights)
    assert probes == []


def test_timm_pretrained_not_cached_offline_fails_at_once(hub_cache, probes, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(WeightsUnavailableError, match=r"hf download timm/test_vit\.r160_in1k"):
        get_backbone("timm:test_vit@pretrained")
    assert probes == [] and time.perf_counter() - started < 20


# ------------------------------------------------------------------ a missing extra


def test_missing_extra_names_the_pip_line(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "transformers" else real(name, *a),
    )
    with pytest.raises(MissingExtraError, match=r'pip install "featpipe\[hf\]"'):
        get_backbone("hf:facebook/dinov2-small")
    assert main(["backbones", "--family", "hf"]) == 0
    out = capsys.readouterr().out
    assert 'hf  not installed: pip install "featpipe[hf]"' in out


def test_backbones_lists_every_family_with_its_status(capsys):
    assert main(["backbones", "--filter", "resnet18"]) == 0
    out = capsys.readouterr().out
    families = out.split("Families:\n")[1].split("\n\n")[0].splitlines()
    assert [ln.split()[0] for ln in families] == [
        "builtin", "hf", "open_clip", "timm", "torchvision",
    ]  # fmt: skip
    assert all("installed" in ln for ln in families)
