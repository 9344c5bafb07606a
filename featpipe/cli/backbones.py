"""``featpipe backbones`` (what can be loaded) and ``featpipe layers SPEC`` (what can be read)."""

from __future__ import annotations

import argparse

import torch

from featpipe.backbones import POOLINGS, get_backbone, hub, list_backbones, list_families
from featpipe.backbones.base import Backbone, looks_channels_last
from featpipe.backbones.efficientnet_lite import VARIANTS, install_hint, weights_installed
from featpipe.backbones.layers import pool, resolve_pooling
from featpipe.backbones.registry import get_family
from featpipe.errors import ConfigError
from featpipe.extras import pip_line
from featpipe.finetune.freezing import unstaged_tail

SPEC_GRAMMAR = """\
Spec grammar: [FAMILY:]NAME[@WEIGHTS]
  efficientnet_lite0                      built-in, bundled ImageNet weights (offline)
  torchvision:resnet50@IMAGENET1K_V2      a torchvision Weights enum name (default: DEFAULT)
  timm:convnext_tiny@pretrained           timm hub weights (default for timm: none)
  torchvision:resnet18@none               random init (seed 0), e.g. for tests
  timm:resnet18@/path/to/state_dict.pth   a local state-dict file
  hf:facebook/dinov2-small                transformers model from the HF cache ([hf] extra)
  hf:/path/to/saved_model                 a folder written by save_pretrained()
  open_clip:ViT-B-32@laion2b_s34b_b79k    OpenCLIP tag from the HF cache ([openclip] extra)
  open_clip:ViT-B-32@/path/to/ckpt.bin    an OpenCLIP checkpoint file
A weights path has a '/' or ends in .pth, .pt, .bin or .safetensors (./NAME for a file here).
Hub weights come from the local cache ($TORCH_HOME/hub/checkpoints, $HF_HOME); not cached,
they are downloaded only when the hub answers (never with HF_HUB_OFFLINE=1)."""

BACKBONES_EPILOG = f"""\
{SPEC_GRAMMAR}

examples:
  featpipe backbones --family builtin
  featpipe backbones --family torchvision --filter resnet
  featpipe backbones --filter vit_tiny
  featpipe backbones --family hf            (model repos in the local HF cache)
"""

LAYERS_EPILOG = f"""\
Every printed name can be requested as NAME or NAME:POOLING, e.g. 'pooled', 'layer3:avg',
'blocks.5:grid:2', 'blocks.11:cls'. Poolings: {", ".join(POOLINGS)}.
Without a pooling: avg for C×H×W maps, cls for T×C tokens, none for D vectors.
'avg' of T×C tokens averages the patch tokens (class and register tokens left out).
'pooled' is the input of the classifier (the final pooled features); 'logits' its output.

examples:
  featpipe layers efficientnet_lite0
  featpipe layers torchvision:resnet18@none --filter layer
  featpipe layers timm:vit_tiny_patch16_224 --image-size 96 --filter blocks.1
  featpipe layers hf:/path/to/saved_model --filter hidden_states
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser(
        "backbones",
        help="list the backbones that can be loaded",
        formatter_class=fmt,
        description="List backbone names, built-ins first, then the families available in "
        "this environment (and, for a family whose extra is not installed, the pip line "
        "that adds it). Built-ins with bundled weights work offline; library models need "
        "their weights in the local cache, a local file, or '@none'.",
        epilog=BACKBONES_EPILOG,
    )
    p.add_argument("--family", choices=list_families(), help="only list this family")
    p.add_argument("--filter", metavar="TEXT", help="only names containing TEXT (any case)")
    p.set_defaults(func=run_backbones)

    q = subparsers.add_parser(
        "layers",
        help="list the layers a backbone spec can read, with shapes",
        formatter_class=fmt,
        description="Build the backbone, run one blank image through it, and list every layer "
        "name it accepts with its output shape, its default pooling and the feature dimension "
        "that gives; then the stage names used by fine-tuning's partial freezing.",
        epilog=LAYERS_EPILOG,
    )
    q.add_argument("spec", metavar="SPEC", help="backbone spec, e.g. efficientnet_lite0")
    q.add_argument(
        "--image-size",
        type=int,
        metavar="N",
        help="input size in pixels (default: the weights' own crop size)",
    )
    q.add_argument("--filter", metavar="TEXT", help="only layer names containing TEXT")
    q.set_defaults(func=run_layers)


def _builtin_note(name: str) -> str:
    if name not in VARIANTS:
        return "built-in"
    if weights_installed(name):
        return "bundled ImageNet weights, offline-ready"
    return f"needs: {install_hint(name)}"


def _family_status(family: str) -> str:
    if family == "builtin":
        return "installed (bundled with featpipe)"
    entry = get_family(family)
    if not entry.available():
        return f"not installed: {pip_line(entry.extra)}"
    if entry.open_names:
        return f"installed (local folders, or repos cached in {hub.cache_dir()})"
    return "installed"


def run_backbones(args: argparse.Namespace) -> int:
    names = list_backbones(filter=args.filter, family=args.family)
    builtins = [n for n in names if ":" not in n]
    libraries = [n for n in names if ":" in n]
    if builtins:
        print("Built-in:")
        width = max(map(len, builtins))
        for n in builtins:
            print(f"  {n:<{width}}  {_builtin_note(n)}")
    for family in sorted({n.partition(":")[0] for n in libraries}):
        members = [n for n in libraries if n.startswith(f"{family}:")]
        print(f"{family} ({len(members)}):")
        for n in members:
            print(f"  {n}")
    if not names and args.filter:
        print(f"No backbone name contains {args.filter!r}; try a shorter --filter.")
    families = [args.family] if args.family else list_families()
    width = max(map(len, families))
    print("\nFamilies:")
    for family in families:
        print(f"  {family:<{width}}  {_family_status(family)}")
    print()
    print(SPEC_GRAMMAR)
    return 1 if not names and args.filter else 0


def _shape_text(shape: tuple[int, ...]) -> str:
    return "×".join(map(str, shape))


def _default_pooling(backbone: Backbone, name: str, shape: tuple[int, ...]) -> tuple[str, int]:
    """The pooling a request without ':POOLING' gets, and the feature dimension it gives;
    'ask :mean' (and mean's dimension) where such a request is refused (patch tokens before
    the class token joins them), 'ask :none' where only none is taken (channels-last maps)."""
    dummy = torch.empty((1, *shape), device="meta")  # shape only, no memory
    if backbone.refuses_default(name):
        return "ask :mean", pool(dummy, "mean").shape[1]
    if looks_channels_last(shape):  # any pooling but none is refused
        return "ask :none", pool(dummy, "none").shape[1]
    pooling = resolve_pooling(None, dummy, backbone.token_pooling_of(name))
    return pooling, pool(dummy, pooling).shape[1]


def run_layers(args: argparse.Namespace) -> int:
    backbone = get_backbone(args.spec, image_size=args.image_size)
    try:
        layers = backbone.describe_layers()
    except (RuntimeError, AssertionError) as exc:  # e.g. a fixed-size ViT at another size
        raise ConfigError(
            f"{backbone.spec} does not run on {backbone.preprocessing.crop}px images ({exc}). "
            "Omit --image-size to use the size its weights were trained at."
        ) from exc
    rows = [
        (name, _shape_text(shape), *_default_pooling(backbone, name, shape))
        for name, shape in layers
        if not args.filter or args.filter.lower() in name.lower()
    ]
    pre = backbone.preprocessing
    print(f"backbone: {backbone.spec}  (weights sha256 {backbone.weights_sha256[:12]}…)")
    # a squash resizes both sides (aspect ratio not kept), not the short side
    resize = (
        f"resize {pre.resize}"
        if pre.crop_mode == "center"
        else f"squash to {pre.resize}×{pre.resize}"
    )
    corner = ", crop corner floored" if pre.crop_offset == "floor" else ""
    print(
        f"preprocessing: {resize}, centre crop {pre.crop}, {pre.interpolation}, "
        f"mean {pre.mean}, std {pre.std}{corner}"
    )
    if rows:
        header = ("layer", "output shape", "default pooling", "dim")
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(4)]
        print()
        for row in [header, *rows]:
            print("  ".join(f"{v!s:<{w}}" for v, w in zip(row, widths, strict=True)).rstrip())
    else:
        print(f"\nNo layer name contains {args.filter!r}.")
    print("\nstages (fine-tuning with partial:N freezes stages 0 to N-1; stage 0 is the stem):")
    for i, stage in enumerate(backbone.stages):
        print(f"  {i:>2}  {' + '.join(stage)}")
    if not backbone.stages:
        print("  none declared: partial:N cannot be used")
    elif backbone.classifier:
        # In no stage, yet they compute 'pooled': partial:N with every stage freezes them.
        tail = unstaged_tail(backbone.model, backbone.classifier, backbone.stages)
        named = {name for name, _ in layers}
        tail = [n + ("" if n in named else " (not a layer)") for n in tail]
        if tail:
            print(
                f"  then, before the classifier {backbone.classifier!r}: {', '.join(tail)}; "
                f"frozen by partial:{len(backbone.stages)} only"
            )
    return 0 if rows else 1
