"""Find a model's attention modules and validate which layers / heads / tau to smooth.

Why not match on class names alone: a decoder's attention modules must be mapped to
0-based *layer indices* so that ``layers="6-8"`` means what the user reads in the paper.
We therefore locate the model's stack of decoder layers (the ``nn.ModuleList`` whose
length is the configured number of layers) and take, in each layer, the outermost
submodule whose class name contains ``Attention``. This works for every Hugging Face
causal LM family we test (Llama, Mistral, Qwen2/3, Gemma2, Phi3, GPT2, GPT-NeoX, Falcon,
OPT, OLMoE, Cohere) without any per-family table.
"""

from __future__ import annotations

import math
import numbers
import re
import weakref
from dataclasses import dataclass
from typing import Iterable, Sequence

from torch import nn

from .errors import SmoothingError

LayerSpec = None | str | int | Iterable[int]
HeadSpec = None | str | int | Iterable[int]


@dataclass(frozen=True)
class AttentionLayout:
    """Where a model's attention lives: one attention module per decoder layer."""

    model_class: str
    modules: tuple[nn.Module, ...]
    num_heads: int

    @property
    def num_layers(self) -> int:
        return len(self.modules)


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return the Hugging Face model inside DDP / DeepSpeed / accelerate wrappers."""
    while not hasattr(model, "config") and isinstance(getattr(model, "module", None), nn.Module):
        model = model.module
    return model


def text_config(model: nn.Module):
    config = getattr(model, "config", None)
    if config is None:
        raise SmoothingError(
            f"{type(model).__name__} has no `.config`; pass a Hugging Face PreTrainedModel "
            "(or a DeepSpeed/DDP wrapper around one) to smoothed_attention."
        )
    get_text_config = getattr(config, "get_text_config", None)
    return get_text_config() if callable(get_text_config) else config


def _is_attention(module: nn.Module) -> bool:
    return "attention" in type(module).__name__.lower()


def _outermost_attention(layer: nn.Module) -> list[nn.Module]:
    """Attention submodules of one decoder layer that are not nested in another one."""
    found: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        for child in module.children():
            if _is_attention(child):
                found.append(child)
            else:
                visit(child)

    visit(layer)
    return found


_layouts: "weakref.WeakKeyDictionary[nn.Module, AttentionLayout]" = weakref.WeakKeyDictionary()


def find_attention_layout(model: nn.Module) -> AttentionLayout:
    """Map decoder-layer index -> attention module for any HF causal LM.

    Cached per model: the search walks every module (~1 ms on a 30-layer model), and a
    teacher enters ``smoothed_attention`` once per training step.
    """
    model = unwrap_model(model)
    layout = _layouts.get(model)
    if layout is None:
        layout = _layouts[model] = _search_attention_layout(model)
    return layout


def _search_attention_layout(model: nn.Module) -> AttentionLayout:
    config = text_config(model)
    num_layers = getattr(config, "num_hidden_layers", None)
    num_heads = getattr(config, "num_attention_heads", None)
    name = type(model).__name__
    if not num_layers or not num_heads:
        raise SmoothingError(
            f"{name}: no attention modules found (its config has no num_hidden_layers / "
            "num_attention_heads). This architecture cannot be smoothed by asu_plugin; use a "
            "Hugging Face decoder LM with softmax attention (Llama, Mistral, Qwen, Gemma, ...)."
        )
    for candidate in model.modules():
        if isinstance(candidate, nn.ModuleList) and len(candidate) == num_layers:
            per_layer = [_outermost_attention(layer) for layer in candidate]
            if all(len(found) == 1 for found in per_layer):
                return AttentionLayout(name, tuple(found[0] for found in per_layer), int(num_heads))
    raise SmoothingError(
        f"{name}: no attention modules found (looked for a stack of {num_layers} decoder layers "
        "each holding one submodule whose class name contains 'Attention'). This architecture "
        "cannot be smoothed by asu_plugin; use a Hugging Face decoder LM (Llama, Mistral, Qwen, "
        "Gemma, Phi, GPT-2, GPT-NeoX, Falcon, OPT, ...)."
    )


def validate_tau(tau) -> float:
    """tau must be a finite real number >= 1 (tau < 1 sharpens attention: not ASU)."""
    if isinstance(tau, bool) or not isinstance(tau, numbers.Real):
        raise SmoothingError(
            f"tau must be a number >= 1, got {tau!r} ({type(tau).__name__}); "
            "set e.g. trainer.method_args.tau=2.3"
        )
    tau = float(tau)
    if not math.isfinite(tau):
        raise SmoothingError(f"tau must be finite, got {tau}; use a value in [1, 4] (paper: 2.3)")
    if tau < 1.0:
        raise SmoothingError(
            f"tau={tau} < 1 would sharpen attention, not smooth it; use tau >= 1 (paper: 2.0-2.8)"
        )
    return tau


_RANGE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def _parse_index_string(spec: str, what: str) -> list[int]:
    """'0,2,10-12' -> [0, 2, 10, 11, 12] (ranges inclusive, as people read them)."""
    indices: list[int] = []
    for part in spec.split(","):
        match = _RANGE.match(part)
        if not match:
            raise SmoothingError(
                f"cannot parse {what} {spec!r}: expected comma-separated indices and inclusive "
                f"ranges such as '6-8' or '0,2,10-12'. On the Hydra command line quote it: "
                f"'trainer.method_args.{what}=\"0,2,10-12\"'"
            )
        start, stop = int(match.group(1)), int(match.group(2) or match.group(1))
        if stop < start:
            raise SmoothingError(f"{what} range {part.strip()!r} is reversed; write it as {stop}-{start}")
        indices.extend(range(start, stop + 1))
    return indices


def _parse_indices(spec, limit: int, what: str, model_class: str) -> tuple[int, ...] | None:
    if spec is None:
        return None
    if isinstance(spec, str):
        indices = _parse_index_string(spec, what)
    elif isinstance(spec, numbers.Integral) and not isinstance(spec, bool):
        indices = [int(spec)]
    else:
        try:
            indices = list(spec)
        except TypeError:
            raise SmoothingError(
                f"{what} must be None, an int, a list of ints or a string like '0,2-4'; got {spec!r}"
            ) from None
        if not all(isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in indices):
            raise SmoothingError(f"{what} must hold integer indices, got {spec!r}")
        indices = [int(i) for i in indices]
    if not indices:
        raise SmoothingError(
            f"empty {what} selection {spec!r} would smooth nothing; pass None to smooth all {what}"
        )
    bad = sorted({i for i in indices if not 0 <= i < limit})
    if bad:
        raise SmoothingError(
            f"{what} {bad} out of range: {model_class} has {limit} {what} (valid: 0-{limit - 1})"
        )
    return tuple(sorted(set(indices)))


@dataclass(frozen=True)
class Selection:
    """A validated request: which attention modules, which query heads, which temperature."""

    tau: float
    layers: tuple[int, ...]  # always explicit after validation
    heads: tuple[int, ...] | None  # None = every query head
    layout: AttentionLayout

    @property
    def modules(self) -> list[nn.Module]:
        return [self.layout.modules[i] for i in self.layers]


def select(model: nn.Module, tau, layers: LayerSpec = None, heads: HeadSpec = None) -> Selection:
    """Validate tau / layers / heads against ``model``; raise SmoothingError with the fix."""
    tau = validate_tau(tau)
    layout = find_attention_layout(model)
    layer_ids = _parse_indices(layers, layout.num_layers, "layers", layout.model_class)
    head_ids = _parse_indices(heads, layout.num_heads, "heads", layout.model_class)
    if head_ids is not None and len(head_ids) == layout.num_heads:
        head_ids = None
    return Selection(
        tau=tau,
        layers=layer_ids if layer_ids is not None else tuple(range(layout.num_layers)),
        heads=head_ids,
        layout=layout,
    )


def describe(selection: Selection) -> Sequence[str]:
    """Human-readable summary used in logs and run records."""
    return (
        f"tau={selection.tau}",
        f"layers={list(selection.layers)}",
        f"heads={'all' if selection.heads is None else list(selection.heads)}",
    )
