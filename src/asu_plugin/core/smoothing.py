"""``smoothed_attention``: run a model's attention at temperature tau, then restore it exactly.

The context wraps the ``forward`` of each selected attention module so that the call runs
inside a :class:`~asu_plugin.core.temperature_mode.TemperatureMode`. Nothing else of the model
changes — no weights, no config, no copy — so one frozen model serves as the smoothed
teacher inside the context and as the plain reference outside it, and leaving the context
restores bit-identical logits. Contexts nest: temperatures multiply on layers selected by
both (exactly as dividing the queries twice would).

On entering with tau > 1, a short probe (cached per model, backend and selection) checks
that smoothing really changes the logits, so an architecture or backend the patch cannot
reach fails loudly instead of training against an unsmoothed teacher.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import weakref
from typing import Iterator

import torch
from torch import nn

from .errors import SmoothingError
from .selection import HeadSpec, LayerSpec, Selection, describe, select, text_config, unwrap_model
from .temperature_mode import TemperatureMode

logger = logging.getLogger(__name__)

_PROBE_LENGTH = 8
_verified: "weakref.WeakKeyDictionary[nn.Module, set]" = weakref.WeakKeyDictionary()


def check_smoothing_args(model: nn.Module, tau, layers: LayerSpec = None, heads: HeadSpec = None) -> Selection:
    """Validate a smoothing request up front (e.g. in a trainer's __init__); no side effects."""
    return select(model, tau, layers, heads)


def _backend(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return str(getattr(config, "_attn_implementation", None) or "unknown")


def _checkpointing(model: nn.Module) -> bool:
    """Whether activation checkpointing is on (5.x renamed the flag; the old name warns)."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(type(model), name):
            return bool(getattr(model, name))
    return False


def _wrap_forward(module: nn.Module, mode: TemperatureMode):
    """Install ``forward`` running inside ``mode``; return a callable that undoes it."""
    had_instance_forward = "forward" in module.__dict__
    previous = module.__dict__.get("forward")
    inner = module.forward

    @functools.wraps(inner)
    def forward(*args, **kwargs):
        with mode:
            return inner(*args, **kwargs)

    module.forward = forward

    def restore() -> None:
        if had_instance_forward:
            module.forward = previous
        else:
            del module.forward

    return restore


@contextlib.contextmanager
def _installed(selection: Selection, backend: str) -> Iterator[None]:
    restores = []
    try:
        for index, module in zip(selection.layers, selection.modules):
            where = (
                f"{selection.layout.model_class} layer {index} ({type(module).__name__}, "
                f"attn_implementation={backend!r})"
            )
            mode = TemperatureMode(selection.tau, selection.layout.num_heads, selection.heads, where)
            restores.append(_wrap_forward(module, mode))
        yield
    finally:
        for restore in reversed(restores):
            restore()


def _probe_ids(model: nn.Module) -> torch.Tensor:
    vocab = int(getattr(text_config(model), "vocab_size", None) or 32)
    device = next(model.parameters()).device
    return (torch.arange(_PROBE_LENGTH, device=device) * 7 + 3).remainder(vocab).unsqueeze(0)


def _self_check(model: nn.Module, selection: Selection) -> None:
    """Raise if smoothing leaves the logits of a short probe unchanged (a silent no-op)."""
    key = (_backend(model), selection.tau, selection.layers, selection.heads)
    done = _verified.setdefault(model, set())
    if key in done:
        return
    modes = [(module, module.training) for module in model.modules()]
    model.eval()  # dropout would make the two probe passes differ for the wrong reason
    try:
        ids = _probe_ids(model)
        with torch.no_grad():
            plain = model(input_ids=ids).logits
            with _installed(selection, _backend(model)):
                smoothed = model(input_ids=ids).logits
    finally:
        for module, training in modes:
            module.training = training
    if torch.equal(plain, smoothed):
        raise SmoothingError(
            f"smoothing {type(model).__name__} with attn_implementation={_backend(model)!r} "
            f"({', '.join(describe(selection))}) left the logits unchanged: the patch cannot "
            "reach this model's attention. Load it with attn_implementation='sdpa' or 'eager', "
            "or pick layers whose attention matters for the output."
        )
    done.add(key)
    logger.debug("smoothing self-check passed for %s (%s)", type(model).__name__, key)


@contextlib.contextmanager
def smoothed_attention(
    model: nn.Module, tau: float, layers: LayerSpec = None, heads: HeadSpec = None
) -> Iterator[nn.Module]:
    """Run the selected attention softmaxes of ``model`` at temperature ``tau``.

    Inside the context, every selected attention computes Softmax(Q K^T * scale / tau),
    where ``scale`` is the model's own (1/sqrt(d), Gemma's query_pre_attn_scalar, ...) and
    tau divides the scores before any soft-capping. Outside it the model is untouched.

    Args:
        model: a Hugging Face causal LM (DeepSpeed / DDP wrappers are unwrapped).
        tau: temperature >= 1; 1 is a no-op.
        layers: None for all decoder layers, 0-based indices, or a string like "0,2,10-12"
            (inclusive ranges).
        heads: None for all query heads, or query-head indices smoothed in every selected layer
            (works for GQA / MQA: these index query heads, not key/value heads).

    Yields the (unwrapped) model. Raises :class:`SmoothingError` on bad input or when the
    smoothing would silently change nothing.
    """
    model = unwrap_model(model)
    selection = select(model, tau, layers, heads)
    if selection.tau == 1.0:
        yield model
        return
    if torch.is_grad_enabled() and _checkpointing(model):  # the check walks every module
        logger.warning(
            "smoothed_attention on %s with gradient checkpointing: a backward run after leaving "
            "the context recomputes *unsmoothed* activations. Run the teacher under no_grad.",
            type(model).__name__,
        )
    _self_check(model, selection)
    with _installed(selection, _backend(model)):
        yield model
