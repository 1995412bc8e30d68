"""The recommendation rule: which (tau, layers) setting to train ASU with.

Among the settings that raise the factual NLL by at least ``min_increase`` (default 0.25
nats/token, so that a setting which barely changes anything cannot win on a ratio of two tiny
numbers), the one with the largest ``increase_ratio`` = delta NLL factual / delta NLL function
(function increase <= 0 ranks first; ties: larger factual increase, smaller tau, fewer
layers). When no setting reaches the minimum, the one with the largest factual increase,
flagged as such. Not the largest ``excess_increase`` (factual minus function increase): that
favours the strongest smoothing, which also wrecks function tokens (measured on SmolLM2: tau=3
on all layers raises the function-token NLL by 2.8 nats and the greedy answer degenerates into
repetition).
"""

from __future__ import annotations

from typing import Optional, Sequence

from .settings import layer_count
from .words import FACTUAL, FUNCTION

DEFAULT_MIN_INCREASE = 0.25


def recommend(
    grid: Sequence[dict], num_layers: int, min_increase: float = DEFAULT_MIN_INCREASE
) -> tuple[Optional[dict], bool]:
    """``(setting, qualified)``: the most selective setting with a factual increase >= ``min_increase``.

    ``grid`` holds the report's entries (``tau``, ``layers``, ``delta_nll`` per class,
    ``increase_ratio``). Selectivity is ``increase_ratio`` (function increase <= 0 ranks first);
    ties: larger factual increase, smaller tau, fewer layers. ``qualified`` is False when no
    setting reaches ``min_increase`` and the one with the largest factual increase is returned
    instead.
    """
    scored = [g for g in grid if g["delta_nll"][FACTUAL] is not None and g["delta_nll"][FUNCTION] is not None]
    if not scored:
        return None, False

    def size(g):
        return layer_count(g["layers"], num_layers)

    eligible = [g for g in scored if g["delta_nll"][FACTUAL] >= min_increase]
    if not eligible:
        return min(scored, key=lambda g: (-g["delta_nll"][FACTUAL], g["tau"], size(g))), False

    def key(g):
        ratio = g["increase_ratio"]
        return (ratio is not None, -(ratio or 0.0), -g["delta_nll"][FACTUAL], g["tau"], size(g))

    return min(eligible, key=key), True


def recommendation_line(
    best: Optional[dict], n_questions: int, qualified: bool = True, min_increase: float = DEFAULT_MIN_INCREASE
) -> str:
    """The one line the CLI prints and the plot carries: the recommended setting and why."""
    if best is None:
        return "recommendation: none (no setting has both factual and function tokens to compare)"
    ratio = (
        "inf (function NLL did not rise)"
        if best["increase_ratio"] is None
        else f"{best['increase_ratio']:.2f}"
    )
    survival = (
        "" if best.get("survival_rate") is None else f", greedy answer survives {best['survival_rate']:.0%}"
    )
    why = (
        f"largest factual/function separation with factual NLL increase >= {min_increase:g}"
        if qualified
        else f"no setting raises factual NLL by {min_increase:g} nats; largest factual increase"
    )
    return (
        f"recommendation: tau={best['tau']:g} layers={best['layers']} - {why}: NLL increase factual "
        f"{best['delta_nll'][FACTUAL]:+.3f} vs function {best['delta_nll'][FUNCTION]:+.3f} nats/token "
        f"(ratio {ratio}{survival}; {n_questions} questions)"
    )
