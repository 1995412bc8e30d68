"""Attention Smoothing Unlearning (ASU) for OpenUnlearning.

Three parts (docs/architecture.md):

* :mod:`asu_plugin.core` — framework-independent (torch + transformers): which attention to
  smooth, the temperature mode, :func:`smoothed_attention`, :func:`token_kl`, :class:`SmoothingError`;
* :mod:`asu_plugin.openunlearning` — the OU integration: trainers, :func:`register`, run records,
  resume, runners for OU's scripts;
* :mod:`asu_plugin.tools` — research tools: the tau-probe, the fluency measure, model preparation.

Public API: :func:`smoothed_attention`, :func:`token_kl`, :func:`check_smoothing_args`,
:class:`SmoothingError`, and :func:`register` (puts the ASU trainers into OU's registry; needs
OU's ``src``).
"""

from .core import SmoothingError, check_smoothing_args, smoothed_attention, token_kl
from .openunlearning.registration import register  # imports OpenUnlearning only when called

__version__ = "0.1.0"

__all__ = ["SmoothingError", "check_smoothing_args", "register", "smoothed_attention", "token_kl", "__version__"]
