"""The one exception type of the smoothing core.

A ``ValueError`` subclass, so code that already guards configuration errors with
``except ValueError`` keeps working; every message names the problem *and* the fix.
"""


class SmoothingError(ValueError):
    """Attention smoothing was asked for something it cannot do (bad tau, layer, head or model)."""
