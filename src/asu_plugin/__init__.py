"""Attention Smoothing Unlearning (ASU) for OpenUnlearning.

Public API (framework-independent: torch + transformers only):

* :func:`smoothed_attention` — context manager running a model's attention at temperature tau;
* :func:`token_kl` — KL(target || student) on answer tokens, averaged per sample;
* :class:`SmoothingError` — raised for every refusal, with the fix in the message;
* :func:`register` — put ASU trainers into OpenUnlearning's registry (needs OU's ``src``).
"""

from .errors import SmoothingError
from .loss import token_kl
from .registration import register  # imports OpenUnlearning only when called
from .smoothing import check_smoothing_args, smoothed_attention

__version__ = "0.1.0"

__all__ = ["SmoothingError", "check_smoothing_args", "register", "smoothed_attention", "token_kl", "__version__"]
