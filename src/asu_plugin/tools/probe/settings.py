"""The probe's grid of (tau, layer set) settings: parsing the CLI's lists and naming a setting.

A layer set is a string: ``"all"`` or an index list such as ``"0-9"`` / ``"0,2,4-6"`` (the
syntax of :func:`~asu_plugin.core.smoothing.smoothed_attention`'s ``layers``). A tau of 1 is
the plain model exactly (the smoothing is a no-op there).
"""

from __future__ import annotations

from .errors import ProbeError


def parse_taus(text: str) -> list[float]:
    """``"1.5,2.3,3.0"`` -> ``[1.5, 2.3, 3.0]``."""
    try:
        taus = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ProbeError(
            f"cannot parse --taus {text!r}: expected comma-separated numbers such as 1.5,2.3,3.0"
        ) from None
    if not taus:
        raise ProbeError("--taus is empty; give e.g. 1.5,2.3,3.0")
    return taus


def parse_layer_sets(text: str) -> list[str]:
    """``"all;0-9;20-29"`` -> ``["all", "0-9", "20-29"]`` (a set may itself hold commas: ``"0,2,4-6"``)."""
    sets = [part.strip() for part in text.split(";") if part.strip()]
    if not sets:
        raise ProbeError('--layers is empty; give e.g. "all;0-9;20-29"')
    return sets


def layers_arg(layer_set: str):
    """The ``layers`` argument of ``smoothed_attention`` for a layer set (None for ``"all"``)."""
    return None if layer_set.lower() == "all" else layer_set


def layer_count(layer_set: str, num_layers: int) -> int:
    """How many layers a layer set smooths on a model with ``num_layers`` layers."""
    from ...core.selection import _parse_index_string

    if layers_arg(layer_set) is None:
        return num_layers
    return len(set(_parse_index_string(layer_set, "layers")))


def setting_key(tau: float, layer_set: str) -> str:
    """The setting's name in reports: ``tau=2.3|layers=0-9``."""
    return f"tau={tau:g}|layers={layer_set}"
