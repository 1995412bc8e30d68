"""Reach the attention softmax of any Hugging Face model without copying its modeling code.

How: while (and only while) a *selected* attention module runs its forward, a
``torch.overrides.TorchFunctionMode`` sees every torch call it makes. Three calls carry
the attention temperature, whatever the architecture or transformers version:

* ``F.scaled_dot_product_attention`` (the SDPA backend): we divide its ``scale`` by tau
  (the default scale 1/sqrt(d) is made explicit first), or, for a head subset, divide
  those heads' queries by tau — mathematically the same thing; a float ``attn_mask`` (where
  ALiBi position biases travel) is divided too, as the eager path divides the whole softmax input;
* ``torch.tanh`` before the softmax (eager attention with logit soft-capping, Gemma2):
  soft-capping is ``cap * tanh(s / cap)``, so dividing the tanh input by tau is exactly
  dividing the scores *before* the cap, as dividing the queries would;
* the softmax of the eager path (``F.softmax`` / ``Tensor.softmax``): we divide its input
  (scores plus additive mask; a masked score stays hugely negative) by tau, unless the
  soft-cap already did.

Every module call must hit one of them; a call that hits none (e.g. flash-attention,
whose kernel is not a torch function) raises, so smoothing can never silently do nothing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .errors import SmoothingError

_SDPA = {F.scaled_dot_product_attention}
_SOFTMAX = {F.softmax, torch.softmax, torch.Tensor.softmax, torch.special.softmax}
_TANH = {torch.tanh, torch.Tensor.tanh, F.tanh}
_INTERCEPTED = _SDPA | _SOFTMAX | _TANH
_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


class TemperatureMode(TorchFunctionMode):
    """Divides the attention scores of one module call by tau (per query head if asked).

    ``head_factor`` is a length-H vector: 1/tau for smoothed heads, 1 elsewhere; None means
    every head, in which case a scalar is used (SDPA then takes the exact ``scale`` path).
    """

    def __init__(self, tau: float, num_heads: int, heads: tuple[int, ...] | None, where: str):
        super().__init__()
        self.tau = tau
        self.num_heads = num_heads
        self.heads = heads
        self.where = where
        self._factors: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}
        self.hits = 0
        self._capped = False

    # -- per-call bookkeeping ------------------------------------------------------------
    def __enter__(self):
        self.hits = 0
        self._capped = False
        return super().__enter__()

    def __exit__(self, exc_type, exc, tb):
        super().__exit__(exc_type, exc, tb)
        if exc_type is None and self.hits == 0:
            raise SmoothingError(
                f"{self.where}: the attention forward made no call that smoothing can reach "
                "(no scaled_dot_product_attention, soft-cap tanh or softmax). This is typical "
                "of flash-attention or custom kernels: load the model with "
                "attn_implementation='sdpa' or 'eager' for the teacher."
            )
        return False

    # -- scaling helpers -------------------------------------------------------------------
    def _head_factor(self, like: torch.Tensor) -> torch.Tensor:
        key = (like.dtype, like.device)
        if key not in self._factors:
            factor = torch.ones(self.num_heads, dtype=like.dtype, device=like.device)
            factor[list(self.heads)] = 1.0 / self.tau
            self._factors[key] = factor
        return self._factors[key]

    def _scale_heads(self, scores: torch.Tensor, what: str) -> torch.Tensor:
        """Multiply dim 'heads' of (B, H, ...) or (B*H, ...) tensors by the head factor."""
        factor = self._head_factor(scores)
        if scores.dim() >= 4 and scores.shape[1] == self.num_heads:
            return scores * factor.view(1, -1, *([1] * (scores.dim() - 2)))
        if scores.dim() == 3 and scores.shape[0] % self.num_heads == 0:
            batch = scores.shape[0] // self.num_heads
            return scores * factor.repeat(batch).view(-1, 1, 1)
        raise SmoothingError(
            f"{self.where}: cannot locate the {self.num_heads} query heads in the {what} tensor of "
            f"shape {tuple(scores.shape)}; per-head smoothing is not supported for this "
            "architecture/backend. Smooth all heads (heads=None) or use attn_implementation='eager'."
        )

    def _temper_bias(self, mask):
        """SDPA adds a float ``attn_mask`` to the scaled scores inside the softmax; position biases
        travel there (ALiBi: Falcon, MPT, BLOOM), so the temperature divides them too, as it does
        on the eager path. Masked entries stay masked (-inf / dtype-min divided by tau), zeros stay
        zero. A boolean mask carries no bias. With a head subset, only a mask with a head axis is
        per head; a head-broadcast float mask is a padding / causal mask and is left as it is."""
        if mask is None or not torch.is_floating_point(mask):
            return mask
        if self.heads is None:
            return mask / self.tau
        if mask.dim() == 4 and mask.shape[1] == self.num_heads:
            return self._scale_heads(mask, "attention bias")
        return mask

    def _temper(self, scores: torch.Tensor, what: str) -> torch.Tensor:
        if self.heads is None:
            return scores / self.tau
        return self._scale_heads(scores, what)

    # -- interception ----------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in _INTERCEPTED:  # the fast path: every other op of the attention forward
            return func(*args, **kwargs)
        kwargs = dict(kwargs)
        if func in _SDPA:
            self.hits += 1
            kwargs.update(zip(_SDPA_ARGS, args))  # callers mix positional and keyword forms
            if self.heads is None:
                scale = kwargs.get("scale")
                if scale is None:
                    scale = 1.0 / math.sqrt(kwargs["query"].shape[-1])
                kwargs["scale"] = scale / self.tau
            else:
                kwargs["query"] = self._scale_heads(kwargs["query"], "query")
            kwargs["attn_mask"] = self._temper_bias(kwargs.get("attn_mask"))
            return func(**kwargs)
        if func in _TANH and not self._capped:
            self.hits += 1
            self._capped = True
            args = (self._temper(args[0], "soft-cap"), *args[1:])
            return func(*args, **kwargs)
        if func in _SOFTMAX:
            self.hits += 1
            if not self._capped:
                args = (self._temper(args[0], "attention score"), *args[1:])
            return func(*args, **kwargs)
        return func(*args, **kwargs)
