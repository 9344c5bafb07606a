"""``open_clip:<model>[@weights]``: OpenCLIP image towers (every ``open_clip.list_models()``).

weights: omitted or ``none`` (random init, seed 0), a path to a checkpoint file
(``open_clip:ViT-B-32@/ckpt/open_clip_pytorch_model.bin``, loaded with ``weights_only``), or a
pretrained tag (``laion2b_s34b_b79k``) resolved from the local HF cache, offline first (see
:mod:`featpipe.backbones.hub`). Only the image tower is kept; ``pooled`` is its embedding (what
``encode_image`` returns, unnormalised). Layers are the tower's module names, e.g.
``visual.transformer.resblocks.N`` (tokens, ``cls`` by default). Preprocessing comes from the
model's preprocess config (the tag's, for a tag). Needs the ``openclip`` extra.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from featpipe.backbones import hub
from featpipe.backbones.base import Backbone, IdentityHead, has_class_token
from featpipe.backbones.preprocessing import Preprocessing
from featpipe.backbones.registry import BackboneSpec, register_family
from featpipe.backbones.timm_models import token_layout
from featpipe.backbones.weights import (
    PATH_RULE,
    fetch_error,
    file_sha256,
    is_weights_path,
    one_line_cause,
    seeded,
    stages_of,
)
from featpipe.errors import ConfigError, unknown_name
from featpipe.extras import import_extra

# open_clip's own names for hub checkpoints, safetensors first as open_clip prefers them.
_HUB_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class OpenCLIPImageModel(nn.Module):
    """An OpenCLIP image tower, its embedding passed through ``head`` (an
    :class:`IdentityHead` until fine-tuning replaces it)."""

    def __init__(self, visual: nn.Module, embed_dim: int, image_size: int):
        super().__init__()
        self.visual = visual
        self.head = IdentityHead(embed_dim)
        self.image_size = image_size  # positional embeddings fix the input size

    def forward(self, x):
        return self.head(self.visual(x))


def _open_clip():
    return import_extra("open_clip", "openclip", "open_clip: backbones")


def model_names() -> list[str]:
    # Not cached: open_clip.add_model_config() may register more at any time.
    return _open_clip().list_models()


def _create(name: str) -> nn.Module:
    """The architecture, randomly initialised (seed 0); weights are loaded after."""
    # open_clip warns on the root logger that no weights were loaded: they are, next.
    before = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        return seeded(lambda: _open_clip().create_model(name, load_weights=False))
    finally:
        logging.disable(before)


def _load(model: nn.Module, path: Path, what: str) -> None:
    try:
        _open_clip().load_checkpoint(model, str(path), weights_only=True)
    except Exception as exc:  # torch.load, safetensors, pickle and strict-load errors
        raise ConfigError(
            f"Could not load {what} from {str(path)!r} into open_clip's {type(model).__name__} "
            f"({type(exc).__name__}: {one_line_cause(exc)}). Check that the file is an "
            "open_clip checkpoint (a state dict, or a dict with one under 'state_dict') "
            "saved from the same architecture."
        ) from exc


def _tag_file(name: str, tag: str, cfg: dict) -> Path:
    """The local checkpoint file of a pretrained tag: from the HF cache (or downloaded when
    the hub can be reached), or open_clip's own URL cache for URL-only tags."""
    local_hint = f"give a checkpoint file as 'open_clip:{name}@/path/to/open_clip_model.bin'"
    if cfg.get("hf_hub"):
        # 'org/repo/' (open_clip's default file names) or 'org/repo/file.bin'
        repo, filename = os.path.split(cfg["hf_hub"])
        files = (f"{Path(filename).stem}.safetensors", filename) if filename else _HUB_FILES
        found = hub.cached_file(repo, files)
        if found is not None:
            return found
        hub.require_hub(f"The weights of open_clip:{name}@{tag}", repo, local_hint)
    try:  # open_clip's own download: the hub, or a URL cached under ~/.cache/clip
        return Path(_open_clip().download_pretrained(cfg))
    except OSError as exc:
        raise fetch_error(f"open_clip weights {name}@{tag}", exc, f"Or {local_hint}.") from exc


def preprocessing_of(cfg: dict) -> Preprocessing:
    """Preprocessing from an open_clip preprocess config, as open_clip's ``image_transform``
    applies it for evaluation: ``resize_mode`` 'shortest' resizes the short side and
    centre-crops, 'squash' resizes both sides to the size. 'longest' (resize the long side,
    pad) and non-square sizes are refused: featpipe would feed other pixels."""
    size = cfg["size"]
    height, crop = (size, size) if isinstance(size, int) else (int(size[0]), int(size[-1]))
    resize_mode = cfg.get("resize_mode") or "shortest"
    if height != crop or resize_mode not in ("shortest", "squash"):
        raise ConfigError(
            f"open_clip preprocesses this model with resize_mode {resize_mode!r} at "
            f"{height}×{crop}; featpipe feeds square crops ('shortest' or 'squash') only."
        )
    # open_clip resizes bilinear when asked for 'bilinear', else bicubic
    interpolation = "bilinear" if cfg.get("interpolation") == "bilinear" else "bicubic"
    return Preprocessing(
        resize=crop,
        crop=crop,
        interpolation=interpolation,
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        crop_mode="squash" if resize_mode == "squash" else "center",
    )


def _stages(net: nn.Module) -> list[tuple[str, ...]]:
    blocks = [n for n, m in net.named_modules() if isinstance(m, nn.ModuleList)]
    stages = stages_of(net, expand=blocks[:1], exclude="head")
    # open_clip registers a ViT's output projection ``proj`` as a parameter ahead of its
    # blocks, so it lands in the stem; it acts last, so it belongs to the last stage.
    proj = [n for n in stages[0] if n == "visual.proj"] if stages else []
    if proj and len(stages) > 1:
        stem = tuple(n for n in stages[0] if n not in proj)
        stages = [stem, *stages[1:-1], stages[-1] + tuple(proj)]
    return stages


def build(spec: BackboneSpec) -> Backbone:
    """Build ``open_clip:<model>[@weights]``: its image tower in eval mode."""
    open_clip = _open_clip()
    weights = spec.weights or "none"
    model = _create(spec.name)
    pre_cfg = dict(open_clip.get_model_preprocess_cfg(model))
    sha = ""  # empty: Backbone hashes the loaded state dict
    if weights == "none":
        pass
    elif is_weights_path(weights):
        path = Path(weights).expanduser().resolve()
        if not path.is_file():
            what = "is a folder, not a file" if path.is_dir() else "does not exist"
            raise ConfigError(
                f"Checkpoint file {str(path)!r} {what}. Give an open_clip checkpoint "
                "(.bin, .pt, .safetensors), a pretrained tag, or 'none' for random init."
            )
        _load(model, path, f"open_clip:{spec.name}")
        sha, weights = file_sha256(path), str(path)
    else:
        tags = open_clip.list_pretrained_tags_by_model(spec.name)
        if weights not in tags:
            raise unknown_name(
                f"pretrained tag for open_clip:{spec.name}",
                weights,
                [*tags, "none", "<path to checkpoint>"],
                hint=f"List tags with open_clip.list_pretrained_tags_by_model(). {PATH_RULE}",
            )
        cfg = open_clip.get_pretrained_cfg(spec.name, weights)
        _load(model, _tag_file(spec.name, weights, cfg), f"open_clip:{spec.name}@{weights}")
        # what open_clip's create_model takes from the tag (the size stays the tower's)
        keys = ("mean", "std", "interpolation", "resize_mode")
        pre_cfg.update({k: cfg[k] for k in keys if k in cfg})
    visual = model.visual
    preprocessing = preprocessing_of(pre_cfg)
    with torch.inference_mode():
        embed_dim = visual(torch.zeros(1, 3, preprocessing.crop, preprocessing.crop)).shape[1]
    net = OpenCLIPImageModel(visual, embed_dim, preprocessing.crop)
    # A timm tower (SigLIP's) pools its tokens as timm does; open_clip's own ViTs have a
    # class token.
    trunk = getattr(visual, "trunk", None)
    tokens, prefix, layers = (
        token_layout(trunk, preprocessing.crop) if trunk is not None else ("cls", 0, ())
    )
    return Backbone(
        spec=str(BackboneSpec("open_clip", spec.name, weights)),
        model=net,
        preprocessing=preprocessing,
        weights_sha256=sha,
        stages=_stages(net),
        classifier="head",
        token_pooling=tokens,
        prefix_tokens=prefix,
        prefix_layers=tuple(f"visual.trunk.{n}" for n in layers),
        # open_clip's own ViTs: one class token before the patches, as its 'avg' pool has it
        patch_start=getattr(trunk, "num_prefix_tokens", None)
        if trunk is not None
        else (1 if has_class_token(visual) else None),
    )


register_family("open_clip", build, model_names, extra="openclip")
