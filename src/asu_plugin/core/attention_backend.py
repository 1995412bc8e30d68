"""Give a frozen model an attention backend that smoothing can reach, keeping its weights.

Smoothing reaches attention through the torch calls an attention forward makes (SDPA, or the
eager softmax; :mod:`.temperature_mode`). Flash-attention and other fused kernels make none, so
a teacher that runs them cannot be smoothed. The student may keep such a kernel (it is trained,
never smoothed); only the frozen copy must run SDPA. :func:`make_reachable` switches a model
*in place* — call it on the copy, never on the student — without copying or reloading weights:

* transformers <= 4.47 (OU pins 4.45.1) picks each layer's attention *class* when the model is
  built (``LLAMA_ATTENTION_CLASSES[config._attn_implementation]`` and the like), so every
  attention module becomes an instance of its family's SDPA class — the same object, the same
  parameters and hooks (DeepSpeed's included), another ``forward`` — and
  ``config._attn_implementation`` is set to ``"sdpa"``, which the mask code reads;
* newer versions look the implementation up in the config at every call
  (``ALL_ATTENTION_FUNCTIONS``), so setting the config (``set_attn_implementation``) is all.

:func:`verify_reachable` then smooths a short probe once (the self-check of
:func:`~.smoothing.smoothed_attention`), so a backend nothing can reach fails when the trainer
starts, not at its first step.
"""

from __future__ import annotations

import logging
import sys

import torch
from torch import nn

from .errors import SmoothingError
from .selection import find_attention_layout, text_config, unwrap_model
from .smoothing import smoothed_attention

logger = logging.getLogger(__name__)

REACHABLE = ("sdpa", "eager")  # what TemperatureMode intercepts: F.scaled_dot_product_attention, softmax
TARGET = "sdpa"


def attention_backend(model: nn.Module) -> str:
    """The attention implementation a (wrapped) Hugging Face model runs: ``config._attn_implementation``."""
    config = getattr(unwrap_model(model), "config", None)
    return str(getattr(config, "_attn_implementation", None) or "eager")


def _class_registry(cls: type) -> dict | None:
    """The ``*_ATTENTION_CLASSES`` dict (implementation -> class) of ``cls``'s modeling module,
    when ``cls`` is one of its values: how transformers <= 4.47 chooses attention at build time."""
    module = sys.modules.get(cls.__module__)
    for name, value in vars(module or object()).items():
        if name.endswith("ATTENTION_CLASSES") and isinstance(value, dict) and cls in value.values():
            return value
    return None


def _construct_on_meta(cls: type, module: nn.Module, config) -> nn.Module | None:
    """A throw-away ``cls`` built on the meta device (no memory), to learn what its __init__ sets."""
    for kwargs in ({"layer_idx": getattr(module, "layer_idx", None)}, {}):
        try:
            with torch.device("meta"):
                return cls(config, **kwargs)
        except TypeError:
            continue
    return None


def _names(module: nn.Module) -> set[str]:
    return {name for name, _ in module.named_parameters()} | {name for name, _ in module.named_buffers()}


def _rebuild_as(module: nn.Module, cls: type, config) -> None:
    """Make ``module`` an instance of ``cls`` carrying its own parameters, buffers and hooks."""
    if isinstance(module, cls) and type(module) is cls:
        return
    fresh = _construct_on_meta(cls, module, config)
    if fresh is None or _names(fresh) != _names(module):
        raise SmoothingError(
            f"cannot rebuild {type(module).__name__} as {cls.__name__} with the same weights "
            f"(its parameters differ or it cannot be built from the config)"
        )
    for key, value in vars(fresh).items():  # plain attributes the target's __init__ adds (flags)
        if key not in vars(module) and not isinstance(value, (nn.Module, torch.Tensor)):
            module.__dict__[key] = value
    module.__class__ = cls


def _set_config(model: nn.Module, backend: str) -> str:
    """Point the model's config (and its text sub-config) at ``backend``, or at ``eager`` where
    transformers refuses ``backend`` for this model; return the one set."""
    setter = getattr(model, "set_attn_implementation", None)
    if callable(setter):  # transformers >= 4.56: validates, and reaches sub-models
        for candidate in (backend, "eager"):
            try:
                setter(candidate)
            except (ValueError, ImportError) as error:
                logger.debug("set_attn_implementation(%r) refused: %s", candidate, error)
                continue
            if attention_backend(model) == candidate:
                return candidate
    # older versions, or a model whose attention cannot be set dynamically: the config itself
    for config in {id(c): c for c in (model.config, text_config(model))}.values():
        config._attn_implementation = backend
    return backend


def make_reachable(model: nn.Module) -> str:
    """Switch ``model`` (changed in place: pass the frozen copy) to an attention backend smoothing
    can reach, keeping its weights. Returns the backend it runs now: its own when already
    reachable (``sdpa`` / ``eager``), else ``sdpa`` (``eager`` for a family without SDPA).

    Raises :class:`SmoothingError` when the attention modules cannot be rebuilt; a model whose
    attention ignores the setting is caught by :func:`verify_reachable`.
    """
    model = unwrap_model(model)
    current = attention_backend(model)
    if current in REACHABLE:
        return current
    modules = find_attention_layout(model).modules
    registries = [_class_registry(type(module)) for module in modules]
    target = TARGET
    if all(registry is not None for registry in registries):  # classes chosen at build time
        for module, registry in zip(modules, registries):
            target = TARGET if TARGET in registry else "eager"
            _rebuild_as(module, registry[target], getattr(module, "config", None) or text_config(model))
    elif not getattr(model, "_supports_sdpa", True):
        target = "eager"
    return _set_config(model, target)


def verify_reachable(model: nn.Module, tau, layers=None, heads=None) -> None:
    """Smooth a short probe once (cached for the run): raises :class:`SmoothingError` when the
    model's attention makes no call smoothing can reach, or smoothing changes nothing."""
    with torch.no_grad(), smoothed_attention(model, tau, layers, heads):
        pass
