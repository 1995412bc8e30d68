"""The framework-independent core of ASU: which attention to smooth (:mod:`.selection`), how
(:mod:`.temperature_mode`, :mod:`.smoothing`), the loss (:mod:`.loss`) and its one error type.

Needs torch and transformers only; imports nothing from :mod:`asu_plugin.openunlearning` or
:mod:`asu_plugin.tools`.
"""

from .errors import SmoothingError
from .loss import token_kl
from .smoothing import check_smoothing_args, smoothed_attention

__all__ = ["SmoothingError", "check_smoothing_args", "smoothed_attention", "token_kl"]
