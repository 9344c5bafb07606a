"""``hf:<repo id or local folder>[@revision]``: Hugging Face transformers image models.

``AutoModel`` plus ``AutoImageProcessor`` from a folder written by ``save_pretrained``
(``hf:/models/dinov2-small``) or from the local HF cache by repo id
(``hf:facebook/dinov2-small``), offline first (see :mod:`featpipe.backbones.hub`). CLIP and
SigLIP checkpoints keep only their vision tower and its projection.

Layers, besides the model's own module names:

- ``hidden_states.N``: the model's N-th hidden state (0: the embeddings), tokens for ViT-style
  models (``cls``/``mean`` pooling; ``mean`` by default where there is no class token) and
  maps for ConvNeXt-style ones (``avg``);
- ``last_hidden_state``: the final (normalised) hidden state;
- ``pooled``: the model's own pooled output (CLIP: the projected image embedding).

Needs the ``hf`` extra (transformers). Preprocessing comes from the image processor.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from featpipe.backbones import hub
from featpipe.backbones.base import Backbone, IdentityHead, has_class_token
from featpipe.backbones.layers import pool
from featpipe.backbones.preprocessing import Preprocessing
from featpipe.backbones.registry import BackboneSpec, register_family
from featpipe.backbones.weights import WeightsUnavailableError, stages_of
from featpipe.errors import ConfigError
from featpipe.extras import import_extra
from featpipe.words import counted, listed

# PIL resampling codes used by image processors -> torchvision interpolation names. Lanczos
# (1) and box/hamming (4, 5) have no torchvision tensor equivalent: bicubic is the closest.
_RESAMPLE = {0: "nearest", 1: "bicubic", 2: "bilinear", 3: "bicubic", 4: "bilinear", 5: "bilinear"}


class HFImageModel(nn.Module):
    """A transformers vision model as a featpipe network: images in, its pooled embedding out
    through ``head`` (an :class:`IdentityHead` until fine-tuning replaces it). Every hidden
    state passes through an identity tap (``hidden_states.N``) so that it can be read like
    any module's output."""

    def __init__(self, tower: nn.Module, projection: nn.Module | None, token_pooling: str):
        super().__init__()
        # Taps first, so that `featpipe layers` lists them before the model's own modules.
        self.hidden_states = nn.ModuleList()
        self.last_hidden_state = nn.Identity()
        self.model = tower
        self.projection = projection
        self.token_pooling = token_pooling  # for a model without a pooler of its own
        params = inspect.signature(tower.forward).parameters
        # Vision transformers that take it run at other sizes than their training size.
        self._kwargs = (
            {"interpolate_pos_encoding": True} if "interpolate_pos_encoding" in params else {}
        )
        self.head: nn.Module = nn.Identity()

    def set_taps(self, n_hidden: int, dim: int) -> None:
        self.hidden_states = nn.ModuleList(nn.Identity() for _ in range(n_hidden))
        self.head = IdentityHead(dim)

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The pooled embedding, before the head."""
        out = self.model(pixel_values=pixel_values, output_hidden_states=True, **self._kwargs)
        for tap, hidden in zip(self.hidden_states, out.hidden_states or (), strict=False):
            tap(hidden)
        last = self.last_hidden_state(out.last_hidden_state)
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:  # no pooler: the class token, the token mean, or the map average
            pooled = pool(last, {3: self.token_pooling}.get(last.ndim, "avg"))
        pooled = pooled.flatten(1)  # some CNNs pool to B×C×1×1
        return pooled if self.projection is None else self.projection(pooled)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(pixel_values))


def model_names() -> list[str]:
    """Model repos in the local HF cache (any of them may be an image model)."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        repos = scan_cache_dir(hub.cache_dir()).repos
    except (CacheNotFound, OSError):
        return []
    return sorted(r.repo_id for r in repos if r.repo_type == "model")


def is_local(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or Path(name).expanduser().is_dir()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """transformers' loading progress bars and notes, off while loading."""
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        logging.enable_progress_bar()


def _locate(spec: BackboneSpec) -> tuple[str, str | None, bool, str]:
    """(what from_pretrained loads, revision, local files only, canonical spec)."""
    if is_local(spec.name):
        path = Path(spec.name).expanduser().resolve()
        if spec.weights is not None:
            raise ConfigError(
                f"'hf:{spec.name}@{spec.weights}': a local model folder takes no '@' part "
                "(revisions apply to hub repo ids). Drop it."
            )
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"'hf:{spec.name}' is not a transformers model folder: {path / 'config.json'} "
                "does not exist. Give a folder written by model.save_pretrained() and "
                "image_processor.save_pretrained(), or a repo id such as facebook/dinov2-small."
            )
        return str(path), None, True, f"hf:{path}"
    repo, revision = spec.name, spec.weights
    snapshot = hub.cached_snapshot(repo, revision)
    if snapshot is not None:
        return str(snapshot), None, True, str(spec)
    hub.require_hub(
        f"The weights of {spec}",
        repo,
        "save the model and its image processor with save_pretrained() and give the folder "
        "as 'hf:/path/to/folder'",
        revision,
    )
    return repo, revision, False, str(spec)


def preprocessing_of(processor) -> Preprocessing:
    """Resize, centre crop, interpolation, mean and std from an image processor.

    A processor that resizes to exactly height×width (ViT, DeiT, BEiT, SigLIP; ConvNeXt at
    384 and above) squashes the image to that size (``crop_mode`` 'squash'), as it does;
    non-square sizes are refused. Centre crops start at ``floor`` offsets, as
    transformers' ``center_crop`` does (``crop_offset``)."""
    _check_pixel_steps(processor)
    size = dict(getattr(processor, "size", None) or {})
    crop_size = dict(getattr(processor, "crop_size", None) or {})
    crop_pct = getattr(processor, "crop_pct", None)
    short = size.get("shortest_edge") or size.get("height") or size.get("width")
    if not short:
        raise ConfigError(
            f"Cannot read an input size from the image processor {type(processor).__name__} "
            f"(size={size}); featpipe needs 'shortest_edge' or 'height'/'width'."
        )
    if not size.get("shortest_edge") and size.get("height") != size.get("width", short):
        raise ConfigError(
            f"The image processor {type(processor).__name__} resizes to "
            f"{size.get('height')}×{size.get('width')}; featpipe feeds square images only."
        )
    # the short side kept to its ratio, or both sides resized (ConvNeXt processors warp to
    # shortest_edge × shortest_edge from 384 up)
    crop_mode = "center" if size.get("shortest_edge") else "squash"
    crops = True  # the processor centre-crops
    if getattr(processor, "do_center_crop", False) and crop_size.get("height"):
        resize, crop = int(short), int(crop_size["height"])
        if crop_pct:  # PoolFormer: the short side to size / crop_pct, then the crop
            resize, crop_mode = int(short / crop_pct), "center"
        elif type(processor).__name__.startswith("Levit") and size.get("shortest_edge"):
            resize = int(256 / 224 * short)  # LeViT's resize scales the short side so
    elif crop_pct and "shortest_edge" in size and short < 384:
        # ConvNeXt processors: resize to shortest_edge / crop_pct, then crop shortest_edge.
        resize, crop = int(short / crop_pct), int(short)
    elif crop_mode == "center" and not crop_pct:
        # transformers resizes the short side and keeps the whole image: its shape follows
        # each image's aspect ratio, while featpipe's batches need one square size.
        raise ConfigError(
            f"The image processor {type(processor).__name__} resizes the short side to {short} "
            "and does not centre-crop (do_center_crop is off), so its images keep their aspect "
            "ratio and differ in shape; featpipe feeds images of one square size. Save the "
            f"processor with do_center_crop=True, crop_size={{'height': {short}, 'width': "
            f"{short}}} (image_processor.save_pretrained) beside the model, and give that "
            "folder as 'hf:/path/to/folder'."
        )
    else:
        resize = crop = int(short)
        # height×width, or ConvNeXt's shortest_edge from 384 up (the branches above took
        # every other short-side resize): both sides resized
        crop_mode = "squash"
        crops = False
    # transformers' center_crop puts the corner at (W - crop) // 2 where torchvision rounds
    # half to even: a pixel apart when the margin is odd. A squash's margin is resize - crop;
    # where it is even both agree and the store key stays.
    floor = crops and (crop_mode == "center" or (resize - crop) % 2 == 1)
    crop_offset = "floor" if floor else "round"
    normalize = getattr(processor, "do_normalize", True)
    mean = processor.image_mean if normalize else (0.0, 0.0, 0.0)
    std = processor.image_std if normalize else (1.0, 1.0, 1.0)
    return Preprocessing(
        resize=max(resize, crop),
        crop=crop,
        interpolation=_RESAMPLE.get(_resample_code(processor), "bilinear"),
        mean=tuple(mean),
        std=tuple(std),
        crop_mode=crop_mode,
        crop_offset=crop_offset,
    )


def _check_pixel_steps(processor) -> None:
    """Refuse the processor steps featpipe does not take: it resizes every image, scales
    pixels to [0, 1] and normalises once, in RGB order."""
    normalize = getattr(processor, "do_normalize", True)
    factor = getattr(processor, "rescale_factor", None)
    steps = {
        "do_resize=False (each image at its own size)": getattr(processor, "do_resize", True)
        is False,
        "do_rescale=False": getattr(processor, "do_rescale", True) is False,
        f"rescale_factor={factor}": factor is not None and abs(factor - 1 / 255) > 1e-9,
        "rescale_offset=True": bool(getattr(processor, "rescale_offset", False)),
        "include_top=True (a second division by the std)": bool(
            normalize and getattr(processor, "include_top", False)
        ),
        "do_flip_channel_order=True (BGR)": bool(
            getattr(processor, "do_flip_channel_order", False)
        ),
    }
    found = [step for step, taken in steps.items() if taken]
    if found:
        raise ConfigError(
            f"The image processor {type(processor).__name__} uses {', '.join(found)}; featpipe "
            "resizes every image, scales pixels to [0, 1] and normalises once with "
            "image_mean/image_std, in RGB order, so it would feed other values. Use a model "
            "whose processor does that."
        )


def _resample_code(processor) -> int:
    """The processor's PIL resampling code; 0 is NEAREST, not a missing value."""
    code = getattr(processor, "resample", None)
    return 2 if code is None else int(code)


def _vision_parts(model: nn.Module, spec: str) -> tuple[nn.Module, nn.Module | None]:
    """The image tower and its projection: CLIP/SigLIP keep their vision model only."""
    tower = getattr(model, "vision_model", None)
    if tower is not None:
        return tower, getattr(model, "visual_projection", None)
    if "pixel_values" not in inspect.signature(model.forward).parameters:
        raise ConfigError(
            f"{spec} is a {type(model).__name__}, which takes no images. Give an image model "
            "(e.g. hf:facebook/dinov2-small, hf:openai/clip-vit-base-patch32)."
        )
    return model, None


def _model_class(transformers, source: str, load: dict):
    """AutoModel, or the class the config names where it is a vision tower with its
    projection (CLIPVisionModelWithProjection): AutoModel builds the tower alone and drops
    the projection's weights, so ``pooled`` would not be the image embedding."""
    config = transformers.AutoConfig.from_pretrained(source, **load)
    arch = next(iter(getattr(config, "architectures", None) or []), "")
    named = (
        getattr(transformers, arch, None) if arch.endswith("VisionModelWithProjection") else None
    )
    return named or transformers.AutoModel


def _check_loaded(
    model: nn.Module, tower: nn.Module, projection: nn.Module | None, info: dict, spec: str
) -> None:
    """Refuse a model whose kept parts (``tower``, ``projection``) have tensors the weights
    file lacks or holds at another shape: transformers fills those at random (unseeded), so
    its features would be random and differ at every load. A pooler the file lacks (DINO and
    MAE ViTs keep none) is dropped instead: ``pooled`` is then the model's pooling without
    it (the class token of ``last_hidden_state``)."""
    parts = [n for n, m in model.named_modules() if m is tower or m is projection]
    prefixes = tuple(f"{n}." if n else "" for n in parts)
    mismatched = [k[0] if isinstance(k, (tuple, list)) else k for k in info["mismatched_keys"]]
    missing = sorted(k for k in info["missing_keys"] if k.startswith(prefixes))
    bad = sorted(k for k in mismatched if k.startswith(prefixes))
    # the tower's own name: the projection may be registered before it
    tower_name = next(n for n, m in model.named_modules() if m is tower)
    pooler = f"{tower_name}.pooler." if tower_name else "pooler."
    only_pooler = missing and all(k.startswith(pooler) for k in missing)
    if only_pooler and not bad and getattr(tower, "pooler", None) is not None:
        tower.pooler = None
        return
    if missing or bad:
        names = [*(f"{k} (missing)" for k in missing), *(f"{k} (other shape)" for k in bad)]
        raise ConfigError(
            f"The weights of {spec} do not fit its config.json: {listed(names)}; "
            f"transformers would fill {counted(len(names), 'tensor')} at random, so its "
            "features would be random. Give a folder whose weights and config.json were saved "
            "together by model.save_pretrained()."
        )


def _blocks(model: nn.Module) -> str | None:
    """The encoder's list of layers: the ModuleList holding the most parameters."""
    lists = [
        (sum(p.numel() for p in m.parameters()), name)
        for name, m in model.named_modules()
        if isinstance(m, nn.ModuleList) and name
    ]
    return max(lists)[1] if lists else None


def build(spec: BackboneSpec) -> Backbone:
    """Build ``hf:<repo or folder>[@revision]`` in eval mode with its preprocessing."""
    transformers = import_extra("transformers", "hf", "hf: backbones")
    source, revision, local_only, canonical = _locate(spec)
    load = {"revision": revision, "local_files_only": local_only}
    try:
        with _quiet():
            # mismatched shapes reported in the loading info, not raised without their names
            model, info = _model_class(transformers, source, load).from_pretrained(
                source,
                dtype=torch.float32,
                output_loading_info=True,
                ignore_mismatched_sizes=True,
                **load,
            )
            processor = transformers.AutoImageProcessor.from_pretrained(source, **load)
    except OSError as exc:  # missing weights or processor files, hub errors
        raise WeightsUnavailableError(
            f"Could not load {canonical} with transformers ({type(exc).__name__}: {exc}). A "
            "model folder needs config.json, the weights (model.safetensors) and "
            "preprocessor_config.json, as model.save_pretrained() and "
            "image_processor.save_pretrained() write them."
        ) from exc
    except ValueError as exc:  # a config transformers does not know (model type, processor)
        raise ConfigError(
            f"transformers {transformers.__version__} cannot load {canonical}: {exc}"
        ) from exc
    tower, projection = _vision_parts(model, canonical)
    _check_loaded(model, tower, projection, info, canonical)
    net = HFImageModel(tower, projection, "cls" if has_class_token(tower) else "mean")
    preprocessing = preprocessing_of(processor)
    blank = torch.zeros(1, 3, preprocessing.crop, preprocessing.crop)
    with torch.inference_mode():  # how many hidden states, and how wide the embedding is
        out = tower(pixel_values=blank, output_hidden_states=True, **net._kwargs)
        n_hidden = len(out.hidden_states or ())
        net.set_taps(n_hidden, net.embed(blank).shape[1])
    blocks = _blocks(net)
    # Tokens before the patches (class, distillation, register): all tokens but the grid's.
    patch = getattr(tower.config, "patch_size", None)
    last = out.last_hidden_state
    patch_start = (
        last.shape[1] - (preprocessing.crop // patch) ** 2
        if net.token_pooling == "cls" and isinstance(patch, int) and last.ndim == 3
        else None
    )
    return Backbone(
        spec=canonical,
        model=net,
        preprocessing=preprocessing,
        stages=stages_of(net, expand=[blocks] if blocks else [], exclude="head"),
        classifier="head",
        token_pooling=net.token_pooling,
        patch_start=patch_start if patch_start and patch_start > 0 else None,
    )


register_family("hf", build, model_names, open_names=True, extra="hf")
