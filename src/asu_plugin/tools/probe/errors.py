"""The probe's one error type, shared by every module of the package."""

from __future__ import annotations


class ProbeError(RuntimeError):
    """The probe cannot run as asked; the message names the problem and the fix."""
