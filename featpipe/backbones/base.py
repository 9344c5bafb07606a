"""A frozen backbone: a torch module, its preprocessing, and named layers to read from."""

from __future__ import annotations

import hashlib
import re
import threading
import weakref
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from featpipe.backbones.layers import (
    LOGITS,
    POOLED,
    POOLED_COMBINES,
    LayerSpec,
    layer_requests,
    pool,
    resolve_pooling,
)
from featpipe.backbones.preprocessing import Preprocessing
from featpipe.errors import ConfigError, unknown_name


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    head = f"{t.dtype}|{tuple(t.shape)}".encode()
    return head + (t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


_SCALARS = (str, bytes, int, float, bool, type(None))


def _state_bytes(value: Any, key: str) -> bytes:
    """Extra state as bytes that are the same in every process: a pickle is not (a tensor's
    holds its memory address, a set's follows the hash seed). Each part carries its type and
    length, so that no two values share an encoding."""

    def framed(tag: str, parts: list[bytes]) -> bytes:
        return f"{tag}|{len(parts)}|".encode() + b"".join(f"{len(p)}:".encode() + p for p in parts)

    if isinstance(value, torch.Tensor):
        return b"tensor|" + _tensor_bytes(value)
    if isinstance(value, (np.ndarray, np.generic)) and not np.asarray(value).dtype.hasobject:
        a = np.ascontiguousarray(value)
        return f"ndarray|{a.dtype.str}|{a.shape}|".encode() + a.tobytes()
    if isinstance(value, _SCALARS):
        return f"{type(value).__name__}|{value!r}".encode()
    if isinstance(value, (list, tuple)):
        return framed("list", [_state_bytes(v, key) for v in value])
    if isinstance(value, dict):
        items = sorted((_state_bytes(k, key), _state_bytes(v, key)) for k, v in value.items())
        return framed("dict", [part for item in items for part in item])
    if isinstance(value, (set, frozenset)):
        return framed("set", sorted(_state_bytes(v, key) for v in value))
    raise ConfigError(
        f"The model's extra state {key!r} holds a {type(value).__name__}, which featpipe cannot "
        "hash for the store key; return tensors, numpy arrays, numbers, strings, lists, sets "
        "or dicts from get_extra_state."
    )


def state_dict_sha256(model: nn.Module) -> str:
    """sha256 over a module's state dict (names, dtypes, shapes and values), for provenance.
    A module's extra state (``get_extra_state``: any object, no tensor) counts by a canonical
    encoding of its tensors, arrays, numbers, strings, lists, sets and dicts."""
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        if isinstance(value, torch.Tensor):
            h.update(f"{key}|".encode() + _tensor_bytes(value))
        else:
            h.update(f"{key}|extra".encode() + _state_bytes(value, key))
    return h.hexdigest()


def as_stages(stages: Sequence[str | Sequence[str]]) -> list[tuple[str, ...]]:
    """Stages as tuples of names; a plain name is a stage of one."""
    return [(s,) if isinstance(s, str) else tuple(s) for s in stages]


def last_linear(model: nn.Module) -> str | None:
    """The name of the model's last ``nn.Linear`` (its classifier, when none is named)."""
    name = None
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear):
            name = n
    return name


class IdentityHead(nn.Linear):
    """The classifier slot of an image encoder that has none (a CLIP or DINOv2 tower): it
    passes the pooled features through, so ``pooled`` and ``logits`` are the embedding. It is
    a Linear by type, with ``in_features`` and no parameters, so that fine-tuning replaces it
    with a real classifier as it does any other."""

    def __init__(self, features: int):
        nn.Module.__init__(self)
        self.in_features = self.out_features = features
        self.register_parameter("weight", None)
        self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def extra_repr(self) -> str:
        return f"features={self.in_features}"


@dataclass
class Backbone:
    """A pretrained network and everything needed to feed it and read it.

    ``spec`` is the canonical spec string (``torchvision:resnet18@none``); ``stages`` are its
    stages in forward order, each a tuple of module or parameter names (a plain name is a
    stage of one), stage 0 being the stem (``partial:N`` fine-tuning freezes stages 0 to N-1);
    ``classifier`` is the module whose input is the ``pooled`` layer; ``token_pooling`` is the
    default pooling of token outputs (``cls``, or ``mean`` for models without a class token);
    ``nhwc_layers`` are the modules whose 4-D outputs are B×H×W×C (Swin's stages), turned to
    B×C×H×W before pooling; ``prefix_layers`` are the modules whose tokens begin with
    ``prefix_tokens`` tokens that are not patches (the register tokens of a ViT without a class
    token), which ``mean`` leaves out as the model's own average pooling does. In a model
    with a class token, ``mean`` averages every token, the class token and any register
    tokens included (ViT-B/16 at 224: 1 of 197; DINOv2 with registers: 5 of 261): left as
    is, since recording a change would give every class-token model's stores new keys.
    ``avg`` of tokens is the patch-token average that timm's, OpenCLIP's and transformers'
    own average pooling compute: ``mean`` in a model without a class token; in one with a
    class token, the tokens after the first ``patch_start`` (timm's ``num_prefix_tokens``)
    of the layers giving the full token sequence, or every token of a layer before the
    class token joins them; refused where ``patch_start`` is None (not known).
    """

    spec: str
    model: nn.Module
    preprocessing: Preprocessing
    weights_sha256: str = ""
    stages: list[tuple[str, ...]] = field(default_factory=list)
    classifier: str | None = None
    token_pooling: str = "cls"
    nhwc_layers: tuple[str, ...] = ()
    prefix_tokens: int = 0
    prefix_layers: tuple[str, ...] = ()
    channels_last_layers: tuple[str, ...] = ()
    class_token_stage: str | None = None
    # Where timm's pre-logits are not the input of ``classifier``: ``pooled`` is the mean of
    # these modules' inputs. A distilled DeiT or PiT averages two classifiers reading the class
    # and the distillation token; a LeViT's classifier (its Linear) comes after its head's
    # BatchNorm, so ``pooled`` reads the input of the whole head.
    pooled_inputs: tuple[str, ...] = ()
    # How ``pooled`` puts the inputs of ``pooled_inputs`` together: their ``mean``, or ``cat``
    # (CrossViT's pre-logits join the class tokens of its two branches, in that order).
    pooled_combine: str = "mean"
    # Not in the identity: 'avg' of tokens was refused before it was offered, so no store
    # holds it under another meaning.
    patch_start: int | None = None
    # Found once per image size (replace(), as at_size's, finds them again): the token
    # outputs of one probe pass, and the patch_only_layers() and full_token_layers() read off it.
    _tokens: list[tuple[str, int, int]] | None = field(
        default=None, init=False, repr=False, compare=False
    )
    _patch_only: frozenset[str] | None = field(default=None, init=False, repr=False, compare=False)
    _full_tokens: frozenset[str] | None = field(default=None, init=False, repr=False, compare=False)
    # The one input size the model takes, where it says so otherwise than by ``image_size``
    # (timm models with a fixed input size: MLP-Mixer, ViTs without dynamic_img_size).
    fixed_size: int | None = None
    # The state dict's sha256 when ``weights_sha256`` was set (the same value unless that is
    # a weights file's hash): :meth:`with_current_weights` compares the model's weights to it.
    state_sha256: str = field(default="", repr=False, compare=False)
    # Whether a ``classifier`` left out is guessed as the model's last ``nn.Linear``. A family
    # that found the model has none turns it off: a timm encoder without a head (Gemma 4's
    # ViT encoder) would get a Linear inside its last block.
    guess_classifier: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.model, nn.Module):
            raise ConfigError(
                f"Backbone {self.spec!r}: model must be a torch nn.Module; got "
                f"{type(self.model).__name__}. Wrap a function in an nn.Module's forward."
            )
        state = self.model.state_dict().values()
        if any(isinstance(t, torch.Tensor) and t.is_meta for t in state):
            raise ConfigError(
                f"Backbone {self.spec!r}: the model's weights are on the meta device (they "
                "hold no values). Load its weights first (load_state_dict(..., assign=True)) "
                "or build it on the CPU."
            )
        self.stages = as_stages(self.stages)
        self._check_names()
        if self.pooled_combine not in POOLED_COMBINES:
            raise unknown_name(
                f"Backbone {self.spec!r}: pooled_combine", self.pooled_combine, POOLED_COMBINES
            )
        self.model.eval()  # for probes and extraction; again in every replace() (at_size)
        if not self.state_sha256:  # replace() carries it over: hashed once per loaded model
            self.state_sha256 = state_dict_sha256(self.model)
        if not self.weights_sha256:
            self.weights_sha256 = self.state_sha256
        if self.classifier is None and self.guess_classifier:
            self.classifier = last_linear(self.model)

    def _check_names(self) -> None:
        """Refuse a classifier that is no module of the model, or stages naming neither
        modules nor parameters: found now, not as a KeyError at the first ``pooled`` or a
        stage silently left unfrozen."""
        modules = {n for n, _ in self.model.named_modules() if n}
        for name in (self.classifier, *self.pooled_inputs):
            if name is not None and name not in modules:
                raise unknown_name(
                    "classifier module",
                    name,
                    modules,
                    hint=f"Backbone {self.spec!r}: name the module whose input is the pooled "
                    "features, or leave classifier out to use the model's last nn.Linear.",
                )
        params = {n for n, _ in self.model.named_parameters()}
        unknown = [n for stage in self.stages for n in stage if n not in modules | params]
        if unknown:
            raise ConfigError(
                f"Backbone {self.spec!r}: stages name {unknown}, which are neither modules "
                "nor parameters of the model. Name its modules in forward order (print "
                "[n for n, _ in model.named_children()]), or parameters such as a class token."
            )

    def with_current_weights(self) -> Backbone:
        """This backbone if its model still holds the weights it was built with; otherwise a
        copy whose ``weights_sha256`` is the hash of the weights it holds now (after
        ``load_state_dict`` or fine-tuning), so that its identity names those."""
        now = state_dict_sha256(self.model)
        if now == self.state_sha256:
            return self
        return replace(self, weights_sha256=now, state_sha256=now)

    def at_size(self, image_size: int | None) -> Backbone:
        """The same model fed at another input size (None keeps the weights' own size)."""
        if image_size is None:
            return self
        # torchvision and OpenCLIP ViTs take one size only, and so do some timm models.
        fixed = self.fixed_size or getattr(self.model, "image_size", None)
        if isinstance(fixed, int) and fixed != image_size:
            raise ConfigError(
                f"{self.spec} accepts {fixed}×{fixed} inputs only; got image size {image_size}. "
                f"Omit the image size, or use a model that takes other sizes (timm ViTs "
                "resize their position embeddings)."
            )
        sized = replace(self, preprocessing=self.preprocessing.at_size(image_size))
        if image_size != self.preprocessing.crop:
            sized._check_runs()
        return sized

    def _check_runs(self) -> None:
        """Refuse an input size the model does not run at (a ViT's patch size that does not
        divide it, LeViT's attention biases of one size) in one line, by one forward pass of
        one blank image: otherwise the first batch of an extraction fails with a traceback."""
        size = self.preprocessing.crop
        tried = _RUNS_AT.setdefault(self.model, set())
        if size in tried:
            return
        try:
            # No train flag to restore: at_size's replace() has just put the model in eval.
            with torch.inference_mode():
                self.model(_blank(self.model, 1, size))
        except torch.OutOfMemoryError:  # a RuntimeError, but not the size's fault
            raise
        except RUN_ERRORS as exc:
            raise does_not_run(
                self.spec,
                size,
                exc,
                f"Give another image size{_sizes_near(self.model, size)}, or omit it to use "
                "the size its weights were trained at.",
            ) from exc
        tried.add(size)

    def identity(self) -> dict:
        """What identifies the features this backbone computes, for store keys and provenance."""
        ident = {
            "spec": self.spec,
            "weights_sha256": self.weights_sha256,
            "preprocessing": self.preprocessing.to_dict(),
        }
        # The pooling of token layers asked for without one ('blocks.5'). Left out when it is
        # 'cls', so that keys made before it was recorded stay valid; timm models without a
        # class token defaulted to 'cls' then, so their old stores must not match now.
        if self.token_pooling != "cls":
            ident["token_pooling"] = self.token_pooling
        # Swin's stages were pooled as B×C×H×W before they were turned: new keys for them.
        if self.nhwc_layers:
            ident["nhwc_layers"] = list(self.nhwc_layers)
        # 'mean' averaged the register tokens too before it left them out: new keys for them.
        if self.prefix_tokens:
            ident["prefix_tokens"] = self.prefix_tokens
        # Layers before the class token read a patch token as 'cls' by default: new keys.
        if self.class_token_stage:
            ident["class_token_stage"] = self.class_token_stage
        # 'pooled' read one classifier's input before (the distillation token, the output of
        # a head's BatchNorm or a MetaFormer MLP head's hidden layer), or in a timm model
        # without a classifier the last block's MLP: new keys.
        if self.pooled_inputs:
            ident["pooled_inputs"] = list(self.pooled_inputs)
        # CrossViT's 'pooled' read one branch's class token before: new keys.
        if self.pooled_combine != "mean":
            ident["pooled_combine"] = self.pooled_combine
        return ident

    def module_names(self) -> list[str]:
        return [n for n, _ in self.model.named_modules() if n]

    def layer_names(self) -> list[str]:
        """Every name a layer request may use: ``pooled``, ``logits`` and the module names."""
        extra = [POOLED] if self.pooled_modules() else []
        return [*extra, LOGITS, *self.module_names()]

    def pooled_modules(self) -> tuple[str, ...]:
        """The modules whose inputs ``pooled`` averages: ``pooled_inputs``, else the classifier."""
        return self.pooled_inputs or ((self.classifier,) if self.classifier else ())

    def combine_pooled(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """``pooled`` from the inputs of :meth:`pooled_modules`, in their order."""
        if self.pooled_combine == "cat":
            return torch.cat(parts, dim=-1)
        return parts[0] if len(parts) == 1 else sum(parts) / len(parts)

    def _module_for(self, spec: LayerSpec) -> tuple[nn.Module, bool]:
        """The module to hook (the first of :meth:`pooled_modules` for ``pooled``), and whether
        to read its input (True) instead of its output."""
        modules = dict(self.model.named_modules())
        if spec.module == POOLED and self.pooled_modules():
            return modules[self.pooled_modules()[0]], True
        if spec.module == LOGITS:
            return self.model, False
        if spec.module in modules and spec.module:
            return modules[spec.module], False
        raise unknown_name(
            "layer",
            spec.module,
            self.layer_names(),
            hint=f"List them with `featpipe layers {self.spec}`.",
        )

    def features(self, layers: str | LayerSpec | Sequence[str | LayerSpec]) -> FeatureModel:
        """A module that returns ``{layer name: (B, D) tensor}`` for every requested layer."""
        specs = [LayerSpec.of(s) for s in layer_requests(layers)]
        if not specs:
            raise ConfigError("Ask for at least one layer, e.g. 'pooled'.")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ConfigError(f"Layer requests repeat a name: {names}.")
        for s in specs:
            self._module_for(s)  # fail early on unknown names
            self._check_pooling(s)  # before any store under the request's key is read
        return FeatureModel(self, specs)

    def _check_pooling(self, spec: LayerSpec) -> None:
        """Refuse poolings that would not read what their name says for this module."""
        if spec.pooling == "avg" and self.token_pooling == "cls" and self.patch_start is not None:
            # what avg_tokens reads, found now: each takes a forward pass, not one inside a pass
            self.full_token_layers()
            self.patch_only_layers()
        if spec.module in self.channels_last_layers and spec.pooling != "none":
            later = [s[0] for s in self.stages[1:] if s[0] not in self.channels_last_layers]
            such = f", such as {later[0]!r}" if later else ""
            raise ConfigError(
                f"Layer {spec.name!r} of {self.spec}: {spec.module!r} gives its outputs "
                "channels last (B×H×W×C maps, or B×windows×tokens×C in window attention), "
                "which featpipe pools over the wrong dimensions. Ask for "
                f"'{spec.module}:none' (the output flattened), or pool another layer that "
                f"`featpipe layers {self.spec}` lists{such}."
            )
        if spec.pooling == "cls" and self.before_class_token(spec.module):
            where = f" (at {self.class_token_stage!r})" if self.class_token_stage else ""
            default = self.token_pooling_of(spec.module) == "mean"
            raise ConfigError(
                f"Layer {spec.name!r} of {self.spec}: {spec.module!r} runs before the class "
                f"token joins the tokens{where}, so its first token is a patch. Ask for "
                f"'{spec.module}:mean'"
                + (f" or {spec.module!r} (mean by default)." if default else ".")
            )
        if spec.pooling is None and self.refuses_default(spec.module):
            raise ConfigError(
                f"Layer {spec.name!r} of {self.spec}: {spec.module!r} gives the patch tokens "
                "before the class token joins them, so its default pooling for tokens, "
                f"'cls', would read a patch. Ask for '{spec.module}:mean' (or "
                f"'{spec.module}:none')."
            )

    def before_class_token(self, module: str) -> bool:
        """Whether ``module`` runs before the class token joins the patch tokens: a layer
        before a late class token's stage (CaiT, XCiT), or one of :meth:`patch_only_layers`."""
        return self._before_late_class_token(module) or module in self.patch_only_layers()

    def _before_late_class_token(self, module: str) -> bool:
        if not self.class_token_stage:
            return False
        tops = [n for n, _ in self.model.named_children()]
        return module.split(".")[0] in tops[: tops.index(self.class_token_stage)]

    def refuses_default(self, module: str) -> bool:
        """Whether a request for ``module`` without a pooling is refused: its patch tokens
        would be pooled by 'cls'. (Only a late class token's stage records 'mean' as their
        default in the identity; elsewhere it would change keys of layers that were right.)"""
        if module in (POOLED, LOGITS):  # no forward pass to find patch_only_layers
            return False
        return module in self.patch_only_layers() and self.token_pooling_of(module) == "cls"

    def patch_only_layers(self) -> frozenset[str]:
        """The token layers, in a model with a class token, that give the patch tokens before
        it joins them (BEiT's patch_embed, transformers' ViT patch_embeddings): found by one
        forward pass as those with fewer tokens than the longest token sequence that finish
        before its first layer. Empty for a late class token's stage (see
        :meth:`before_class_token`)."""
        if self._patch_only is None:
            found = ()
            if not self.class_token_stage and has_class_token(self.model):
                found = _tokens_before_longest(self._probed_tokens())
            self._patch_only = frozenset(found)
        return self._patch_only

    def token_pooling_of(self, module: str) -> str:
        """The default pooling of ``module``'s tokens: ``mean`` where they are patches only,
        before a late class token's stage (its identity records that stage)."""
        return "mean" if self._before_late_class_token(module) else self.token_pooling

    def channels_first(self, module: str, out: torch.Tensor) -> torch.Tensor:
        """``out`` as B×C×H×W where ``module`` gives B×H×W×C maps (pooling averages dims 2
        and 3: over W and C of such a map, not over H and W)."""
        return out.permute(0, 3, 1, 2) if out.ndim == 4 and module in self.nhwc_layers else out

    def patch_tokens(self, module: str, out: torch.Tensor) -> torch.Tensor:
        """``out`` without its prefix tokens where ``module`` gives them (``mean`` pooling)."""
        return out[:, self.prefix_tokens :] if module in self.prefix_layers else out

    def avg_tokens(self, spec: LayerSpec, out: torch.Tensor) -> torch.Tensor:
        """The patch tokens of ``out`` (B×T×C) that ``avg`` averages (see the class doc)."""
        if self.token_pooling == "mean":  # no class token: mean leaves out the registers
            return self.patch_tokens(spec.module, out)
        if self.patch_start is not None and spec.module in self.full_token_layers():
            return out[:, self.patch_start :]
        if self.patch_start is not None and self.before_class_token(spec.module):
            return out
        why = (
            "the model does not say how many class or register tokens come first"
            if self.patch_start is None
            else f"{spec.module!r} gives neither the full token sequence nor patches only"
        )
        raise ConfigError(
            f"Layer {spec.name!r} of {self.spec}: 'avg' of tokens averages the patch tokens, "
            f"but {why}. Ask for '{spec.module}:cls' or '{spec.module}:mean' (every token)."
        )

    def full_token_layers(self) -> frozenset[str]:
        """The token layers whose outputs have as many tokens as the longest in one forward
        pass (the class and register tokens, then the patches): found once per image size."""
        if self._full_tokens is None:
            tokens = self._probed_tokens()
            longest = max((t for _, t, _ in tokens), default=0)
            self._full_tokens = frozenset(n for n, t, _ in tokens if t == longest)
        return self._full_tokens

    def _probed_tokens(self) -> list[tuple[str, int, int]]:
        """:func:`_token_outputs` at this backbone's size, probed once (``:avg`` reads both
        :meth:`full_token_layers` and :meth:`patch_only_layers` off it)."""
        if self._tokens is None:
            self._tokens = _token_outputs(self.model, self.preprocessing.crop)
        return self._tokens

    def describe_layers(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, output shape for one image) for every module that runs once in a dummy
        forward pass (one that runs more often, such as ResNet's block relu, cannot be tapped),
        leaving out ``channels_last_layers`` (their shape would read as C×H×W), modules
        whose first dimension is not the image (TNT's pixel tokens) and attention weights
        (:func:`is_attention_weights`: their default pooling is a constant)."""
        shapes: dict[str, tuple[int, ...]] = {}
        calls: Counter[str] = Counter()
        weights: set[str] = set()
        handles = []
        for name, module in self.model.named_modules():
            if not name:
                continue

            def hook(_m, _inp, out, name=name):
                calls[name] += 1
                if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
                    out = out[0]
                # a first dimension other than the one image's rows cannot be tapped
                if isinstance(out, torch.Tensor) and out.shape[:1] == (1,) and name not in shapes:
                    shapes[name] = tuple(self.channels_first(name, out).shape[1:])
                    if is_attention_weights(out):
                        weights.add(name)

            handles.append(module.register_forward_hook(hook))
        modules = dict(self.model.named_modules())
        pooled_parts: dict[str, torch.Tensor] = {}
        for name in self.pooled_modules():

            def pre_hook(_m, inp, name=name) -> None:  # a value returned would replace the input
                pooled_parts.setdefault(name, inp[0])

            handles.append(modules[name].register_forward_pre_hook(pre_hook))
        try:
            size = self.preprocessing.crop
            # random pixels: maps of zeros can sum to 1 along a row (sigmoid(0) × 2 columns)
            x = _blank(self.model, 1, size, random=True)
            with torch.inference_mode():
                logits = self.model(x)
            # a model giving a tuple, or one number per image, has no logits layer
            if isinstance(logits, torch.Tensor) and logits.ndim >= 2:
                shapes[LOGITS] = tuple(logits.shape[1:])
            if len(pooled_parts) == len(self.pooled_modules()) > 0:
                parts = [pooled_parts[n] for n in self.pooled_modules()]
                shapes[POOLED] = tuple(self.combine_pooled(parts).shape[1:])
        except torch.OutOfMemoryError:  # a RuntimeError, but not the model's input
            raise
        except RUN_ERRORS as exc:
            raise does_not_run(self.spec, size, exc, FEEDS) from exc
        finally:
            for h in handles:
                h.remove()
        return [
            (n, shapes[n])
            for n in self.layer_names()
            if n in shapes
            and calls[n] <= 1
            and n not in self.channels_last_layers
            and n not in weights
        ]


# timm (CrossViT: cls_token_0, CoaT: cls_token1), torchvision, transformers (ViT, DINOv2,
# DeiT, BEiT: cls_token; CLIP: class_embedding), OpenCLIP
_CLASS_TOKEN = re.compile(r"(cls_token|class_token|class_embedding)(_?\d+)?$")


def has_class_token(model: nn.Module) -> bool:
    """Whether ``model`` has a class token parameter (SigLIP, Swin, CNNs have none)."""
    return any(_CLASS_TOKEN.match(n.rpartition(".")[2]) for n, _ in model.named_parameters())


def first_outputs(
    model: nn.Module, batch: int, size: int, forward: Callable[[torch.Tensor], Any] | None = None
) -> tuple[dict[str, tuple[int, ...]], Any]:
    """The output shape of every named module's first call (the first tensor of a tuple),
    in the order the calls finish, in one forward pass in eval mode of ``batch`` zero images
    at ``size`` (``forward``: the model's own call, e.g. ``forward_features``), and that
    pass's result."""
    shapes: dict[str, tuple[int, ...]] = {}

    def hook(_m, _inp, out, name: str) -> None:  # must return None: a value replaces `out`
        out = out[0] if isinstance(out, (tuple, list)) and out else out
        if isinstance(out, torch.Tensor):
            shapes.setdefault(name, tuple(out.shape))

    handles = [
        m.register_forward_hook(lambda m, i, o, name=name: hook(m, i, o, name))
        for name, m in model.named_modules()
        if name
    ]
    training = model.training  # eval: a pass in training mode would update batch norms
    try:
        with torch.inference_mode():
            model.eval()
            result = (forward or model)(_blank(model, batch, size))
    finally:
        model.train(training)
        for h in handles:
            h.remove()
    return shapes, result


def _token_outputs(model: nn.Module, size: int) -> list[tuple[str, int, int]]:
    """(name, tokens, width) of every module giving B×T×C tokens in a forward pass at
    ``size``, in the order the calls finish."""
    shapes, _ = first_outputs(model, 2, size)
    # an Unfold gives B×(C·k·k)×patches, no tokens (TNT's pixel_embed.unfold was the longest)
    unfolds = {n for n, m in model.named_modules() if isinstance(m, nn.Unfold)}
    return [
        (n, s[1], s[2]) for n, s in shapes.items() if len(s) == 3 and s[0] == 2 and n not in unfolds
    ]


def _tokens_before_longest(tokens: list[tuple[str, int, int]]) -> list[str]:
    """The modules whose B×T×C outputs (``tokens``: :func:`_token_outputs`) have fewer tokens
    than the longest ones and finish before the first module giving those; and those followed
    by a module giving T + 1 tokens of the same width: a class token joins each branch or stage
    (CrossViT's second patch embedding, CoaT's later ones)."""
    longest = max((t for _, t, _ in tokens), default=0)
    first = next((i for i, (_, t, _) in enumerate(tokens) if t == longest), 0)
    return [
        n
        for i, (n, t, c) in enumerate(tokens)
        if i < first or any((t + 1, c) == (t2, c2) for _, t2, c2 in tokens[i + 1 :])
    ]


def looks_channels_last(shape: tuple[int, ...]) -> bool:
    """Whether a 3-D map of one image is H×W×C: inputs are square, so its first two dims are
    equal and its last is not (ConvNeXt's LayerNorm and Linears inside a torchvision or
    transformers block, which no backbone's list of channels-last layers names). A map with
    as many channels as rows and columns cannot be told either way."""
    return len(shape) == 3 and shape[0] == shape[1] != shape[2]


def is_attention_weights(out: torch.Tensor) -> bool:
    """Whether a 4-D output holds rows of probabilities (softmax attention weights, heads×T×T,
    through an attention dropout that is the identity at eval): every row along the last
    dimension is non-negative and sums to 1, so its average over the last two dimensions is
    1/T for every image."""
    if out.ndim != 4 or out.shape[-1] < 2 or not out.is_floating_point():
        return False
    rows = out.detach().float()
    return bool(rows.min() >= 0) and torch.allclose(rows.sum(-1), torch.ones(()), atol=1e-2)


# the input sizes each model has run at (Backbone._check_runs), kept while the model lives
_RUNS_AT: weakref.WeakKeyDictionary[nn.Module, set[int]] = weakref.WeakKeyDictionary()

_AVERAGES = ("avg", "avgmax", "grid:1")  # poolings that average every row of a map


def _sizes_near(model: nn.Module, size: int) -> str:
    """', e.g. 96 or 112 (multiples of its patch size 16)': the image sizes nearest ``size``
    that the model's square patch size (timm's ``patch_embed.patch_size``) divides, where it
    does not divide ``size``; '' where the model names no patch size."""
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if isinstance(patch, (tuple, list)) and len(set(patch)) == 1:
        patch = patch[0]
    if not isinstance(patch, int) or patch < 1 or size % patch == 0:
        return ""
    below = size // patch * patch
    near = [str(n) for n in (below, below + patch) if n >= patch]
    what = "multiples" if len(near) > 1 else "a multiple"
    return f", e.g. {' or '.join(near)} ({what} of its patch size {patch})"


# what a model's forward raises on inputs it does not take (OutOfMemoryError excepted)
RUN_ERRORS = (RuntimeError, AssertionError, ValueError)


FEEDS = (
    "featpipe feeds 3-channel images at the preprocessing's crop size: give a model that takes "
    "them, or a Preprocessing whose crop it takes."
)


def does_not_run(spec: str, size: int, exc: BaseException, fix: str) -> ConfigError:
    """The one line for a model whose forward pass failed with ``exc`` on ``size``×``size``
    images, torch's own words in brackets, then ``fix``."""
    cause = " ".join(str(exc).split())[:300].rstrip(".")  # no '.).' once in brackets
    return ConfigError(f"{spec} does not run on {size}×{size} images ({cause}). {fix}")


def input_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """The device and dtype of the model's first floating-point parameter (CPU, float32 for a
    model without one): images are fed in that dtype, since float32 into float64 or bfloat16
    weights fails (a convolution's "Input type (float) and bias type (double)")."""
    p = next((p for p in model.parameters() if p.is_floating_point()), None)
    return (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)


def _blank(model: nn.Module, n: int, size: int, random: bool = False) -> torch.Tensor:
    """``n`` zero images (``random``: pixels drawn with seed 0) of ``size``×``size`` for a probe
    pass, on the model's device and in its :func:`input_dtype`."""
    shape = (n, 3, size, size)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g) if random else torch.zeros(shape)
    return x.to(*input_dtype(model))


class FeatureModel(nn.Module):
    """Runs the backbone once and returns pooled activations of several layers. Threads may
    run it at once (extraction's lanes on a CPU): each thread's hooks capture into its own
    outputs."""

    def __init__(self, backbone: Backbone, specs: list[LayerSpec]):
        super().__init__()
        self.backbone = backbone
        self.model = backbone.model
        self.specs = specs
        self.poolings: dict[str, str] = {}  # resolved after the first forward pass
        self._captured = threading.local()  # .out: {layer name: features} of this thread's pass
        self._handles = []
        modules = dict(self.model.named_modules())
        for spec in specs:
            module, read_input = backbone._module_for(spec)
            if spec.module == LOGITS:
                continue
            if spec.module == POOLED and backbone.pooled_inputs:
                self._handles += [
                    modules[name].register_forward_pre_hook(
                        lambda _m, inp, spec=spec, name=name: self._capture_part(spec, name, inp[0])
                    )
                    for name in backbone.pooled_inputs
                ]
                continue
            if read_input:
                h = module.register_forward_pre_hook(
                    lambda _m, inp, spec=spec: self._capture(spec, inp[0])
                )
            else:
                h = module.register_forward_hook(
                    lambda _m, _i, out, spec=spec: self._capture(spec, out)
                )
            self._handles.append(h)

    def _capture_part(self, spec: LayerSpec, name: str, part: torch.Tensor) -> None:
        """The input of one of :attr:`Backbone.pooled_inputs`; once the last has come, they
        are put together (their mean, (a + b) / 2 as timm computes it, or joined)."""
        if getattr(self._captured, "out", None) is None:  # the model run by itself
            return
        parts = self._captured.parts.setdefault(spec.name, {})
        parts[name] = part
        if len(parts) == len(self.backbone.pooled_inputs):
            names = self.backbone.pooled_inputs
            self._capture(spec, self.backbone.combine_pooled([parts[n] for n in names]))

    def _capture(self, spec: LayerSpec, out) -> None:
        captured = getattr(self._captured, "out", None)
        if captured is None:  # the backbone's model run by itself, not by this thread's forward
            return
        if spec.name in captured:
            parent = spec.module.rpartition(".")[0] or "its parent"
            raise ConfigError(
                f"Layer {spec.module!r} of {self.backbone.spec} runs more than once in a "
                "forward pass (one module reused, as ResNet's relu is within a block), so its "
                f"features would be whichever call came last. Tap a module that runs once, such "
                f"as {parent!r}; `featpipe layers {self.backbone.spec}` lists them."
            )
        if isinstance(out, (tuple, list)):
            out = out[0]
        out = self._rows(spec.module, out)
        out = self.backbone.channels_first(spec.module, out)
        pooling = resolve_pooling(spec.pooling, out, self.backbone.token_pooling_of(spec.module))
        if pooling != "none" and out.ndim == 4 and looks_channels_last(tuple(out.shape[1:])):
            raise ConfigError(
                f"Layer {spec.name!r} of {self.backbone.spec}: {spec.module!r} gives "
                f"channels-last maps (H×W×C = {'×'.join(map(str, out.shape[1:]))}), which "
                f"pooling {pooling!r} would reduce over W and C. Ask for "
                f"'{spec.module}:none' (the output flattened), or pool a layer that "
                f"`featpipe layers {self.backbone.spec}` shows as C×H×W (the block's output)."
            )
        # checked on the first batch only: the test syncs a GPU, and softmax rows stay rows
        first = spec.name not in self.poolings
        if first and pooling in _AVERAGES and is_attention_weights(out):
            t = out.shape[-1]
            raise ConfigError(
                f"Layer {spec.name!r} of {self.backbone.spec}: {spec.module!r} gives attention "
                f"weights ({'×'.join(map(str, out.shape[1:]))}, rows that sum to 1), whose "
                f"average is 1/{t} for every image: {pooling!r} would give constant features. "
                f"Ask for '{spec.module}:max' or '{spec.module}:none', or tap the attention's "
                "output (its parent module)."
            )
        self.poolings[spec.name] = pooling
        if pooling == "mean":
            out = self.backbone.patch_tokens(spec.module, out)
        if pooling == "avg" and out.ndim == 3:
            out = self.backbone.avg_tokens(spec, out)
            pooling = "mean"  # of the patch tokens; poolings records 'avg'
        # A copy: 'none' and 'cls' give views of the output, which the rest of the forward
        # may change in place (ResNet's in-place ReLU and shortcut add after a batch norm).
        captured[spec.name] = pool(out, pooling, spec.name).to(torch.float32, copy=True)

    def _rows(self, module: str, out: Any) -> torch.Tensor:
        """``out`` of ``module`` if it is a tensor of one row per image; a one-line refusal
        otherwise (a model's output that is a tuple or dict, one number per image)."""
        batch = self._captured.batch
        what = f"Layer {module!r} of {self.backbone.spec}"
        fix = f"Tap another layer that `featpipe layers {self.backbone.spec}` lists."
        if module == LOGITS:  # the model's own output
            what = f"The output ('logits') of {self.backbone.spec}"
            fix = "Ask for 'pooled' or another layer, or give a model that returns a tensor."
        if not isinstance(out, torch.Tensor):
            raise ConfigError(f"{what} is a {type(out).__name__}, not a tensor. {fix}")
        if out.ndim < 2 or out.shape[0] != batch:  # rows of another kind than images
            raise ConfigError(
                f"{what} has shape {tuple(out.shape)} for a batch of {batch} (not one row of "
                "features per image: one number each, TNT's pixel tokens, windows of an "
                f"attention layer), so its features would not belong to the images. {fix}"
            )
        return out

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self._captured.out = out = {}
        self._captured.parts = {}
        self._captured.batch = x.shape[0]
        try:
            logits = self.model(x)
        finally:
            self._captured.out = None
        for spec in self.specs:
            if spec.module == LOGITS:
                logits = self._rows(LOGITS, logits)
                self.poolings[spec.name] = resolve_pooling(
                    spec.pooling, logits, self.backbone.token_pooling
                )
                out[spec.name] = pool(logits, self.poolings[spec.name], spec.name).float()
        return {s.name: out[s.name] for s in self.specs}

    def remove(self) -> None:
        """Detach the hooks from the backbone's model."""
        for h in self._handles:
            h.remove()
        self._handles = []
