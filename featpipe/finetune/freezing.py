"""Fine-tuning modes: which parameters train and which modules stay in eval mode."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import nn

from featpipe.backbones.base import as_stages
from featpipe.errors import ConfigError

MODES = ("full", "partial:N", "bn", "head", "lpft", "scratch")


@dataclass(frozen=True)
class Mode:
    """A parsed mode string; ``stages`` is N for ``partial:N``."""

    kind: str
    stages: int = 0

    @classmethod
    def parse(cls, text: str) -> Mode:
        kind, sep, n = str(text).strip().partition(":")
        if kind == "partial" and sep and n.isdigit() and int(n) >= 1:
            return cls("partial", int(n))
        if not sep and kind in ("full", "bn", "head", "lpft", "scratch"):
            return cls(kind)
        raise ConfigError(
            f"Unknown fine-tuning mode {text!r}. Valid modes: {', '.join(MODES)} "
            "(N >= 1 stages frozen, e.g. 'partial:2'; list stages with `featpipe layers SPEC`)."
        )

    @property
    def pretrained(self) -> bool:
        """False for ``scratch``: the same architecture from random initialisation."""
        return self.kind != "scratch"

    def __str__(self) -> str:
        return f"partial:{self.stages}" if self.kind == "partial" else self.kind


@dataclass
class Frozen:
    """What a mode froze: parameter names without gradients, and modules kept in eval mode
    (so their batch-norm running statistics and dropout do not change while training)."""

    params: list[str] = field(default_factory=list)
    eval_modules: list[nn.Module] = field(default_factory=list)
    # Why the mode does not do what its name says on this model (``bn`` with no batch norm).
    note: str | None = None


def is_bn(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def has_batch_norm(model: nn.Module) -> bool:
    """Whether mode ``bn`` freezes anything in ``model`` (else it trains like ``full``)."""
    return any(is_bn(m) for m in model.modules())


def describe_stages(stages: list[tuple[str, ...]]) -> str:
    """``0 conv1 + bn1, 1 layer1, ...``: what ``partial:N`` counts."""
    return ", ".join(f"{i} {' + '.join(stage)}" for i, stage in enumerate(stages))


def _unstaged_stem(model: nn.Module, stages: list[tuple[str, ...]]) -> list[str]:
    """Top-level modules (or parameters) registered before the first staged parameter that no
    stage holds: a stem that the stage list leaves out."""
    staged = [n for stage in stages for n in stage]
    out: dict[str, None] = {}
    for name, _ in model.named_parameters():
        if _within(name, staged):
            break
        out[name.split(".")[0]] = None
    return list(out)


def unstaged_tail(model: nn.Module, head: str, stages: list[tuple[str, ...]]) -> list[str]:
    """Modules registered after the last stage and before the new head that no stage holds:
    the part of the classifier that computes the ``pooled`` features (MobileNetV3's
    ``classifier.0`` Linear + Hardswish, ConvNeXt's final LayerNorm), which stages leave out."""
    staged = [n for stage in stages for n in stage]
    names = [n for n, _ in model.named_modules()]
    last = max((i for i, n in enumerate(names) if _within(n, staged)), default=len(names))
    out: list[str] = []
    for name in names[last + 1 :]:
        if name == head:
            break
        if not _related(name, head) and not _within(name, out):
            out.append(name)
    return out


def _within(name: str, names: list[str]) -> bool:
    """True for a name in ``names`` or inside one of them."""
    return any(name == n or name.startswith(n + ".") for n in names)


def check_mode(mode: Mode, stages: Sequence[str | Sequence[str]]) -> None:
    """A ConfigError unless ``mode`` can be applied to a backbone with ``stages``: checked
    before a fit makes its run folder, and again by ``freeze``."""
    if mode.kind != "partial":
        return
    stages = as_stages(stages)
    if not stages:
        raise ConfigError("This backbone declares no stages, so 'partial:N' cannot be used.")
    if mode.stages > len(stages):
        raise ConfigError(
            f"Mode 'partial:{mode.stages}' freezes more stages than the backbone has "
            f"({len(stages)}: {describe_stages(stages)}); use N between 1 and {len(stages)}."
        )


def _partial_names(
    model: nn.Module, mode: Mode, stages: list[tuple[str, ...]], head: str
) -> tuple[list[str], list[str]]:
    """The modules and the loose parameters (held by no module named) ``partial:N`` freezes:
    stages 0 to N-1 (stage 0: the stem), plus any parameters registered before them that no
    stage holds; with every stage frozen, also the modules between the last stage and the
    head (the whole feature extractor is frozen)."""
    check_mode(mode, stages)
    names = [n for stage in stages[: mode.stages] for n in stage]
    # Training a stem left out of the stages under frozen stages would make no sense.
    names += _unstaged_stem(model, stages)
    if mode.stages == len(stages):
        # They compute the pooled features: training them would be no frozen extractor.
        names += unstaged_tail(model, head, stages)
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    unknown = [n for n in names if n not in modules and n not in params]
    if unknown:
        raise ConfigError(
            f"Stages name {unknown}, which are neither modules nor parameters of the "
            "model; a backbone's stages must name its modules (or parameters, such as a "
            "class token)."
        )
    frozen_modules = [n for n in names if n in modules]
    return frozen_modules, [n for n in names if n not in modules]


def frozen_by(
    model: nn.Module, mode: Mode, stages: Sequence[str | Sequence[str]], head: str
) -> tuple[str, ...] | None:
    """The modules, then the loose parameters, that ``partial:N`` freezes in ``model`` (the
    model is not changed). Stage lists are in no backbone identity, so rows and checkpoints
    record them: a fine-tune of other frozen modules is another result. None for other modes,
    whose freezing reads no stage list."""
    if mode.kind != "partial":
        return None
    modules, params = _partial_names(model, mode, as_stages(stages), head)
    loose = [p for p in params if not any(p.startswith(f"{m}.") for m in modules)]
    return (*modules, *loose)


def freeze(
    model: nn.Module, mode: Mode, stages: Sequence[str | Sequence[str]], head: str
) -> Frozen:
    """Set ``requires_grad`` for ``mode`` on ``model`` whose new classifier is module ``head``
    (``partial:N``: see ``_partial_names``)."""
    stages = as_stages(stages)
    modules = dict(model.named_modules())
    frozen_modules: list[str] = []
    frozen_params: list[str] = []
    if mode.kind == "partial":
        frozen_modules, frozen_params = _partial_names(model, mode, stages, head)
    elif mode.kind == "head":
        frozen_modules = [n for n in modules if n and not _related(n, head)]
        # Parameters of no frozen module (a ViT's cls_token and pos_embed, on the model
        # itself): only the head trains.
        kept = [*frozen_modules, head]
        frozen_params = [n for n, _ in model.named_parameters() if not _within(n, kept)]
    elif mode.kind == "bn":
        frozen_modules = [n for n, m in modules.items() if n and is_bn(m)]

    frozen = Frozen()
    if mode.kind == "bn" and not frozen_modules:
        # Refusing would stop a pipeline that sweeps its modes over several backbones.
        frozen.note = (
            "the backbone has no batch-norm layers, so mode 'bn' freezes nothing and trains "
            "exactly like 'full'"
        )
    for name in frozen_params:  # parameters held by no frozen module (a class token)
        model.get_parameter(name).requires_grad_(False)
        frozen.params.append(name)
    for name in frozen_modules:
        module = modules[name]
        for pname, p in module.named_parameters(prefix=name):
            if p.requires_grad:
                p.requires_grad_(False)
                frozen.params.append(pname)
        frozen.eval_modules.append(module)
    if mode.kind == "lpft":
        # Every parameter trains, but batch-norm statistics stay those the probe was fitted
        # under: batch statistics of the new images would change the features at the first
        # step, the probe's head would start from garbage, and training diverges.
        frozen.eval_modules += [m for m in modules.values() if is_bn(m)]
    return frozen


def _related(name: str, head: str) -> bool:
    """True for the head, its ancestors and its descendants."""
    return head == name or head.startswith(name + ".") or name.startswith(head + ".")


def training_batch_norm(model: nn.Module, frozen: Frozen) -> list[str]:
    """The batch-norm modules of ``model`` that train (``frozen`` keeps the others in eval
    mode): a training batch of one image cannot go through them."""
    kept = {id(m) for m in frozen.eval_modules}
    return [n for n, m in model.named_modules() if is_bn(m) and id(m) not in kept]


def check_batches_of_one(model: nn.Module, frozen: Frozen, said: str, world: int) -> None:
    """A ConfigError, starting with ``said`` (where and which batch_size), when batches of
    one image go through batch norm that trains in ``model`` (checks before a fine-tune)."""
    if training := training_batch_norm(model, frozen):
        per_rank = f" ({world} ranks, 1 image each)" if world > 1 else ""
        raise ConfigError(
            f"{said}{per_rank} trains batches of 1 image through batch norm that trains (e.g. "
            f"{training[0]}), which normalises each batch by its own statistics. Use a "
            "batch_size of at least 2 per rank, or a mode that keeps batch norm frozen (bn, "
            "head, lpft)."
        )


def set_train_mode(model: nn.Module, frozen: Frozen) -> None:
    """``model.train()`` except for frozen modules, which keep their statistics."""
    model.train()
    for module in frozen.eval_modules:
        module.eval()
