"""``timm:<model>[@weights]``: every model in ``timm.list_models()``.

weights: omitted or ``none`` (random init, seed 0), ``pretrained`` (timm's hub weights, from
the local HF cache first; see :mod:`featpipe.backbones.hub`), or a path to a local state-dict
file. Preprocessing comes from the model's ``pretrained_cfg``. timm is imported on first use:
it is slow to import.
"""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path

from torch import nn

from featpipe.backbones import hub
from featpipe.backbones.base import (
    Backbone,
    IdentityHead,
    first_outputs,
    has_class_token,
    last_linear,
)
from featpipe.backbones.preprocessing import CROP_MODES, Preprocessing
from featpipe.backbones.registry import BackboneSpec, register_family
from featpipe.backbones.weights import (
    PATH_RULE,
    build_from_file,
    fetch_error,
    is_weights_path,
    seeded,
    stages_of,
)
from featpipe.errors import ConfigError, unknown_name

# timm's file names in a hub repo, safetensors first as timm prefers them.
_HUB_FILES = ("model.safetensors", "pytorch_model.bin")


@cache
def model_names() -> list[str]:
    import timm

    return timm.list_models()


def create(name: str, pretrained: bool = False, **kwargs) -> nn.Module:
    """``timm.create_model``, with ``dynamic_img_size`` where the model takes it so that vision
    transformers also run at another ``--image-size`` than the one they were trained at."""
    import timm

    try:
        return timm.create_model(name, pretrained=pretrained, dynamic_img_size=True, **kwargs)
    except TypeError:  # CNNs take no such argument
        return timm.create_model(name, pretrained=pretrained, **kwargs)


def create_pretrained(name: str) -> nn.Module:
    """The model with timm's pretrained weights: from the local HF cache without touching the
    network; when they are not cached, downloaded only if the hub can be reached now."""
    from timm.models import get_pretrained_cfg

    local_hint = (
        f"save the state dict and give it as 'timm:{name}@/path/to/weights.pth', or append "
        "'@none' for random init"
    )
    cfg = get_pretrained_cfg(name)
    if cfg is not None and cfg.hf_hub_id:
        repo, _, revision = cfg.hf_hub_id.partition("@")  # timm writes 'org/name@revision'
        filename = cfg.hf_hub_filename
        files = (f"{Path(filename).stem}.safetensors", filename) if filename else _HUB_FILES
        path = hub.cached_file(repo, files, revision or None)
        if path is not None:  # loaded as timm loads a local file (filters, class count)
            overlay = {"file": str(path), "source": None}
            return create(name, pretrained=True, pretrained_cfg_overlay=overlay)
        hub.require_hub(f"timm pretrained weights for {name!r}", repo, local_hint, revision or None)
    try:  # the hub answers (or the weights come from a URL, cached by torch.hub)
        return create(name, pretrained=True)
    except OSError as exc:  # hub and URL download failures
        what = f"timm pretrained weights for {name!r}"
        raise fetch_error(what, exc, f"Or {local_hint}.") from exc


def preprocessing_of(model: nn.Module) -> Preprocessing:
    """Preprocessing from the model's ``pretrained_cfg`` (timm's ``resolve_data_config``)."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    name = getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__
    height, crop = (int(v) for v in cfg["input_size"][-2:])
    crop_mode = cfg.get("crop_mode") or "center"
    if height != crop:
        raise ConfigError(
            f"timm's {name} takes {height}×{crop} inputs; featpipe feeds square crops only, "
            "and a square crop of them would not be the pixels timm feeds it."
        )
    if crop_mode not in CROP_MODES:  # 'border': resize the long side, pad to the crop
        raise ConfigError(
            f"timm's {name} preprocesses with crop_mode {crop_mode!r}; featpipe knows "
            f"{', '.join(CROP_MODES)} only, and another mode would not give timm's pixels."
        )
    return Preprocessing(
        resize=math.floor(crop / cfg["crop_pct"]),
        crop=crop,
        interpolation=cfg["interpolation"],
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        crop_mode=crop_mode,
        crop_pct=cfg["crop_pct"],
    )


def _named_classifiers(model: nn.Module) -> list[str]:
    """The classifiers timm names in ``pretrained_cfg``: several where the model combines
    distilled or auxiliary heads."""
    named = getattr(model, "pretrained_cfg", {}).get("classifier")
    return [named] if isinstance(named, str) else list(named or ())


def _named_classifier(model: nn.Module) -> str:
    """The (first) classifier timm names in ``pretrained_cfg``; '' where it names none."""
    return (_named_classifiers(model) or [""])[0]


def _is_conv_classifier(module: nn.Module | None) -> bool:
    # A 1x1 convolution after the global pool (DLA, DPN, ResNetV2): its input, flattened,
    # is timm's pre-logits.
    return isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1)


def _empty_head(model: nn.Module) -> str | None:
    """In a model built without a classifier (``num_classes=0``), the Identity that stands
    where timm names one, or in place of the module holding it (a MetaFormer's MLP head, a
    LeViT's BatchNorm + Linear head); its input is timm's pre-logits. None elsewhere."""
    modules = dict(model.named_modules())
    parts = _named_classifier(model).split(".")
    while parts and ".".join(parts) not in modules:
        parts.pop()
    name = ".".join(parts)
    return name if name and isinstance(modules[name], nn.Identity | IdentityHead) else None


def _give_empty_head_a_width(model: nn.Module) -> None:
    """Put an :class:`IdentityHead` of the pre-logits' width in place of the Identity of a
    model built without a classifier, so that fine-tuning replaces it as it does any
    classifier (it refused the Identity). It has no parameters: the state-dict hash, so the
    store keys, stay the same. Not where timm names several classifiers (distilled DeiT,
    LeViT, VOLO's aux_head): the others would go on giving the pre-logits beside the new one."""
    empty = _empty_head(model)
    one = len(_named_classifiers(model)) == 1
    if empty and one and type(model.get_submodule(empty)) is nn.Identity:
        width = getattr(model, "head_hidden_size", None) or model.num_features
        model.set_submodule(empty, IdentityHead(width))


def _classifier_of(model: nn.Module) -> str | None:
    """The classifier timm names in ``pretrained_cfg`` where it is a Linear or a 1x1
    convolution, else the Identity of a model built without one: never a Linear inside a
    block, which :func:`~featpipe.backbones.base.last_linear` would guess there. None where
    it is neither: :func:`_guessed_classifier` guesses."""
    name = getattr(model, "pretrained_cfg", {}).get("classifier")
    module = dict(model.named_modules()).get(name) if isinstance(name, str) else None
    if isinstance(module, nn.Linear) or _is_conv_classifier(module):
        return name
    return _empty_head(model)


def _guessed_classifier(model: nn.Module) -> str | None:
    """The model's last Linear, for a model whose classifier timm does not name as one
    (the projector's last layer of Qwen3's and DeepSeek's ViT encoders, a distilled model's
    head_dist); None where that Linear lies inside a block: the model has no head at its top
    (Gemma 4's ViT encoder got its last block's MLP, blocks.15.mlp.down_proj.linear)."""
    name = last_linear(model)
    blocks = tuple(f"{c}." for c in _block_containers(model))
    return None if name is None or name.startswith(blocks) else name


def _pooled_inputs(model: nn.Module) -> tuple[tuple[str, ...], str]:
    """The modules whose inputs make timm's pre-logits (``forward_head(pre_logits=True)``)
    where the input of the classifier timm names does not, and how they are put together
    (:attr:`Backbone.pooled_combine`); ((), 'mean') for other models."""
    from timm.models.crossvit import CrossVit
    from timm.models.deit import VisionTransformerDistilled

    try:
        from timm.models.efficientvim import EfficientViM
    except ImportError:  # older timm releases have no EfficientViM
        EfficientViM = ()
    from timm.models.metaformer import MlpHead
    from timm.models.pit import PoolingVisionTransformer

    # One head per branch, each reading its branch's pooled tokens; the pre-logits join them
    # all: CrossViT's class tokens, EfficientViM's stage averages (a distilled one's
    # heads_dist read the same).
    for kind, heads in ((CrossVit, "head"), (EfficientViM, "heads")):
        if isinstance(model, kind):
            return tuple(f"{heads}.{i}" for i in range(len(getattr(model, heads)))), "cat"

    # A distilled DeiT or PiT: its heads read the class and the distillation token, and its
    # pre-logits are their mean.
    if isinstance(model, VisionTransformerDistilled) or (
        isinstance(model, PoolingVisionTransformer) and model.head_dist is not None
    ):
        return ("head", "head_dist"), "mean"
    # A BatchNorm + Linear head (LeViT, EfficientViT-MSRA, RepViT, SHViT, iFormer): timm
    # names the Linear, but its pre-logits are the input of the whole head, before the norm.
    # A distilled LeViT's head_dist reads the same input as its head.
    first = _named_classifier(model)
    head = first.split(".")[0]
    if head != first and _is_norm_linear(dict(model.named_children()).get(head)):
        return (head,), "mean"
    # A MetaFormer's MLP head (CAFormer, ConvFormer): timm names its last Linear, whose input
    # is the head's hidden layer; the pre-logits are the input of the whole MLP head.
    holder = first.rpartition(".")[0]
    if holder and isinstance(dict(model.named_modules()).get(holder), MlpHead):
        return (holder,), "mean"
    # A model built without a classifier: the input of the Identity in its place (before,
    # Backbone guessed the last Linear, inside the last block): new keys.
    empty = _empty_head(model)
    return ((empty,), "mean") if empty else ((), "mean")


def _is_norm_linear(head: nn.Module | None) -> bool:
    """A classifier made of a BatchNorm1d and Linears alone (and dropouts)."""
    if head is None:
        return False
    leaves = [m for m in head.modules() if not list(m.children())]
    kinds = (nn.BatchNorm1d, nn.Linear, nn.Dropout, nn.Identity)
    return all(isinstance(m, kinds) for m in leaves) and any(
        isinstance(m, nn.BatchNorm1d) for m in leaves
    )


def _block_containers(model: nn.Module) -> set[str]:
    """The modules holding the blocks that ``feature_info``'s stage taps name: opened into
    their blocks by :func:`~featpipe.backbones.weights.stages_of`."""
    from timm.models.mvitv2 import MultiScaleVit

    # MViTv2's taps name 'block.N', a module it does not have; its stages are 'stages.N' (it
    # was two stages: the patch embedding, then all the others).
    if isinstance(model, MultiScaleVit):
        return {"stages"}
    info = getattr(model, "feature_info", None)
    names = [f.get("module", "") for f in info] if isinstance(info, list) else []
    modules = dict(model.named_modules())
    taps = (_tap_module(name, modules) for name in names)
    return {c for c in (_container_of(name, modules) for name in taps) if c}


def _tap_module(name: str, modules: dict[str, nn.Module]) -> str:
    """A ``feature_info`` tap as a module name of the model. A wrapper that copies its
    encoder's ``feature_info`` (Gemma 4's classifier) names the encoder's modules
    ('blocks.3' for 'encoder.blocks.3'): the one module whose name ends so. As given where
    it is a module, or where none or several end so."""
    if not name or name in modules:
        return name
    found = [n for n in modules if n.endswith(f".{name}")]
    return found[0] if len(found) == 1 else name


_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _container_of(name: str, modules: dict[str, nn.Module]) -> str | None:
    """The container of blocks on the path of a ``feature_info`` tap: the first Sequential or
    ModuleList whose child on that path holds parameters ('stages' of 'stages.1', 'blocks' of
    Xception41's 'blocks.0.stack.act3', 'encoder.blocks' of 'encoder.blocks.3'). A tap on an
    activation inside a block (legacy Xception's 'block2.rep.0', NASNet's
    'cell_4.conv_1x1.act') names none: the block is one stage, whole. Failing those, the top
    of a two-part name ('stem.conv1': the stem's parts)."""
    parts = name.split(".")
    for depth in range(1, len(parts)):
        container = ".".join(parts[:depth])
        child = modules.get(".".join(parts[: depth + 1]))
        holds = child is not None and next(child.parameters(), None) is not None
        if holds and isinstance(modules.get(container), _CONTAINERS):
            return container
    return parts[0] if len(parts) == 2 else None


def _token_pooling(model: nn.Module) -> str:
    """``cls`` where the model has a class token; ``mean`` for token models without one (ViTs
    with global average or attention pooling, SigLIP, MLP-Mixer), whose first token is a
    patch or register token."""
    from timm.models.mlp_mixer import MlpMixer

    if has_class_token(model):
        return "cls"
    tokens = hasattr(model, "num_prefix_tokens") or isinstance(model, MlpMixer)
    return "mean" if tokens else "cls"  # CNNs have no token layers: keep their keys


def _nhwc_layers(model: nn.Module, classifier: str | None) -> tuple[str, ...]:
    """For models whose features are B×H×W×C (``output_fmt`` NHWC: Swin, MambaOut): the
    top-level modules before the head and the stages ``feature_info`` names. Modules inside
    a stage are left as they are: some of them give B×C×H×W maps."""
    if getattr(model, "output_fmt", "NCHW") != "NHWC":
        return ()
    head = (classifier or "head").split(".")[0]
    info = getattr(model, "feature_info", None)
    stages = [f.get("module", "") for f in info] if isinstance(info, list) else []
    tops = [name for name, _ in model.named_children() if name != head]
    return tuple(dict.fromkeys([*tops, *(s for s in stages if s)]))


def _is_nhwc(module: nn.Module) -> bool:
    return str(getattr(module, "output_fmt", "")).endswith("NHWC")  # a Format or a str


def _channels_first(model: nn.Module, size: int) -> set[str]:
    """The modules whose outputs, in a forward pass at ``size``, are square B×C×H×W maps
    (dims 2 and 3 equal, dim 1 not): in an NHWC model, those between a convolution and the
    permute after it (MambaOut's stem.act)."""
    shapes, _ = first_outputs(model, 1, size)
    return {n for n, s in shapes.items() if len(s) == 4 and s[2] == s[3] != s[1]}


def _channels_last_layers(
    model: nn.Module, classifier: str | None, nhwc: tuple[str, ...], size: int
) -> tuple[str, ...]:
    """The modules with B×H×W×C outputs that ``nhwc`` (the layers turned to B×C×H×W) leaves
    out: a patch embedding that gives NHWC maps (ViTs with ``dynamic_img_size``) and its
    norm; in an NHWC model (Swin, MambaOut), the modules inside its stages that are not
    convolutions and whose maps at ``size`` are not B×C×H×W. Some of those give tokens
    (Swin's windows): only ``none`` may tap them, which is right for every layout."""
    modules = dict(model.named_modules())
    names = [n for n, m in modules.items() if n and _is_nhwc(m)]
    names += [f"{n}.norm" for n in list(names) if f"{n}.norm" in modules]
    if _is_nhwc(model):
        head = (classifier or "head").split(".")[0]
        convs = tuple(f"{n}." for n, m in modules.items() if isinstance(m, nn.Conv2d))
        names += [
            n
            for n, m in modules.items()
            if n
            and n.split(".")[0] != head
            and not isinstance(m, nn.Conv2d)
            and not f"{n}.".startswith(convs)
        ]
        first = _channels_first(model, size)
        names = [n for n in names if n not in first]
    return tuple(n for n in dict.fromkeys(names) if n not in nhwc)


def _class_token_stage(model: nn.Module) -> str | None:
    """The top-level module where a late class token joins the patch tokens (CaiT, XCiT)."""
    children = dict(model.named_children())
    return next((n for n in ("blocks_token_only", "cls_attn_blocks") if n in children), None)


def _prefix_layers(model: nn.Module, size: int) -> tuple[str, ...]:
    """The modules whose token outputs begin with the model's prefix tokens, for a model
    without a class token (its register tokens, which timm's average pooling leaves out):
    those with as many tokens as its final features. The patch embedding has fewer (or gives
    a map). Found by one forward pass at ``size``."""
    shapes, final = first_outputs(model, 1, size, model.forward_features)
    if final.ndim != 3:
        return ()
    return tuple(n for n, s in shapes.items() if len(s) == 3 and s[1] == final.shape[1])


def token_layout(model: nn.Module, size: int) -> tuple[str, int, tuple[str, ...]]:
    """A timm model's default token pooling, and for a ViT without a class token ('mean' is
    its default) the number of register tokens that come first and the modules that give
    them (found at input ``size``)."""
    pooling = _token_pooling(model)
    prefix = getattr(model, "num_prefix_tokens", 0) if pooling == "mean" else 0
    return pooling, prefix, _prefix_layers(model, size) if prefix else ()


def _fixed_size(model: nn.Module) -> int | None:
    """The input size of a model that takes no other (its forward asserts it), else None."""
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    if not cfg.get("fixed_input_size") or getattr(model, "dynamic_img_size", False):
        return None
    return int(cfg["input_size"][-1])


def _coat_stages(model: nn.Module) -> list[tuple[str, ...]] | None:
    """CoaT's stages in forward order (None for other models): it registers every patch
    embedding, then every positional encoding, then the blocks, so registration order is
    not forward order. Scale i is its patch embedding with its class token, then its serial
    blocks with the encodings (cpe, crpe) they share (the parallel blocks reuse the later
    ones); then the parallel blocks with the norms, then ``aggregate``."""
    from timm.models.coat import CoaT

    if not isinstance(model, CoaT):
        return None
    held = {n for n, m in model.named_children() if next(m.parameters(), None) is not None}
    held |= {n for n, _ in model.named_parameters(recurse=False)}
    parts = [
        names
        for i in range(1, 5)
        for names in (
            (f"patch_embed{i}", f"cls_token{i}"),
            (f"serial_blocks{i}", f"cpe{i}", f"crpe{i}"),
        )
    ]
    parts += [("parallel_blocks", "norm2", "norm3", "norm4"), ("aggregate",)]
    stages: list[tuple[str, ...]] = []
    for names in parts:
        stage = tuple(n for n in names if n in held)
        if stage and stages and all(n.startswith("norm") for n in stage):
            stages[-1] += stage  # a norm joins the stage before it (CoaT-Lite's norm4)
        elif stage:
            stages.append(stage)
    return stages


def _twins_stages(model: nn.Module) -> list[tuple[str, ...]] | None:
    """Twins' stages in forward order (None for other models): it registers every patch
    embedding, then every scale's blocks, then every positional convolution (run after its
    scale's first block). Scale i is its patch embedding, then its blocks with that
    convolution; the last scale's take the norm."""
    from timm.models.twins import Twins

    if not isinstance(model, Twins):
        return None
    scales = range(len(model.blocks))
    stages = [
        s for i in scales for s in ((f"patch_embeds.{i}",), (f"blocks.{i}", f"pos_block.{i}"))
    ]
    return [*stages[:-1], (*stages[-1], "norm")]


def model_stages(model: nn.Module, classifier: str | None) -> list[tuple[str, ...]]:
    """A timm model's stages in forward order (:attr:`Backbone.stages`), whole blocks each."""
    return (
        _coat_stages(model)
        or _twins_stages(model)
        or stages_of(model, _block_containers(model), exclude=classifier)
    )


def make_backbone(spec: str, model: nn.Module, weights_sha256: str = "") -> Backbone:
    """A Backbone around a timm model: its preprocessing, classifier, token pooling and
    stages."""
    _give_empty_head_a_width(model)
    classifier = _classifier_of(model) or _guessed_classifier(model)
    preprocessing = preprocessing_of(model)
    token_pooling, prefix, prefix_layers = token_layout(model, preprocessing.crop)
    nhwc = _nhwc_layers(model, classifier)
    pooled_inputs, pooled_combine = _pooled_inputs(model)
    backbone = Backbone(
        spec=spec,
        model=model,
        preprocessing=preprocessing,
        weights_sha256=weights_sha256,
        classifier=classifier,
        token_pooling=token_pooling,
        nhwc_layers=nhwc,
        fixed_size=_fixed_size(model),
        prefix_tokens=prefix,
        prefix_layers=prefix_layers,
        channels_last_layers=_channels_last_layers(model, classifier, nhwc, preprocessing.crop),
        class_token_stage=_class_token_stage(model),
        pooled_inputs=pooled_inputs,
        pooled_combine=pooled_combine,
        patch_start=getattr(model, "num_prefix_tokens", None),
        guess_classifier=False,  # guessed above, never inside a block
    )
    backbone.stages = model_stages(model, backbone.classifier)
    return backbone


def build(spec: BackboneSpec) -> Backbone:
    """Build ``timm:<name>[@weights]`` in eval mode with its preprocessing."""
    weights = spec.weights or "none"
    sha = ""  # empty: Backbone hashes the loaded state dict
    if weights == "none":
        model = seeded(lambda: create(spec.name))
    elif weights == "pretrained":
        model = create_pretrained(spec.name)
    elif is_weights_path(weights):
        model, sha, weights = build_from_file(lambda **kw: create(spec.name, **kw), weights)
    else:
        raise unknown_name(
            f"weights for timm:{spec.name}",
            weights,
            ["none", "pretrained", "<path to state dict>"],
            hint="timm weights are 'none' (random init), 'pretrained' (hub download) or a "
            f"path to a state-dict file. {PATH_RULE}",
        )
    return make_backbone(str(BackboneSpec("timm", spec.name, weights)), model, sha)


register_family("timm", build, model_names)
