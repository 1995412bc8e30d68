"""What the train-step sections compare, declared: the methods and the compared pairs.

Adding a row to the benchmark is an edit here (and, for a new goal limit, one key in
``config.FULL["goals"]``):

- a new way to build a trainer: one ``Method`` in ``METHODS`` (a class by ``module:attribute``
  path and its keyword arguments; a bench-only variant goes in ``bench_trainers``);
- a new compared row: one ``Pair`` in ``STEP_PAIRS``. ``timing="interleaved"`` times both
  trainers in one process, alternating (ratios per repeat); ``timing="fresh"`` times one warm
  step in each of ``step.rss_reps`` fresh processes per method (the same processes give the peak
  RSS), for comparisons whose two sides must not share a process (a cache, an adapter library).

The plan, the analysis, the goals and the Markdown rows follow from these declarations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from .config import ASU_ARGS, NPO_ARGS

TIMINGS = ("interleaved", "fresh")


@dataclass(frozen=True)
class Method:
    """A trainer as the bench builds it: its class (``module:attribute``, imported only in the
    measuring process, after OpenUnlearning) and its keyword arguments besides Trainer's own."""

    trainer: str
    kwargs: Mapping = field(default_factory=dict)


@dataclass(frozen=True)
class Pair:
    """One compared row of the train-step table: ``candidate`` / ``baseline``.

    ``time_goal`` / ``rss_goal`` name limits in the configuration's ``goals`` (None: no goal,
    the ratio is still reported). The time goal is met when the lower quartile of the ratio is
    at most the limit (within the IQR); the RSS goal compares medians.
    """

    key: str
    candidate: str
    baseline: str
    timing: str = "interleaved"
    time_goal: str | None = "step_time"
    rss_goal: str | None = "step_rss"

    @property
    def methods(self) -> tuple[str, str]:
        return self.candidate, self.baseline


_ASU = "asu_plugin.openunlearning.trainers"
_NPO = "trainer.unlearn.npo:NPO"  # OpenUnlearning's
METHODS: Mapping[str, Method] = MappingProxyType({
    "ASU_GD": Method(f"{_ASU}:ASU_GD", ASU_ARGS),
    "ASU_KL": Method(f"{_ASU}:ASU_KL", ASU_ARGS),
    # the authors' layout: a second frozen copy as teacher besides the reference (design section)
    "ASU_KL_2COPIES": Method("perfbench.bench_trainers:ASU_KL_TwoCopies", ASU_ARGS),
    "NPO_NLL": Method(_NPO, {**NPO_ARGS, "retain_loss_type": "NLL"}),
    "NPO_KL": Method(_NPO, {**NPO_ARGS, "retain_loss_type": "KL"}),
})

STEP_PAIRS: tuple[Pair, ...] = (
    Pair("gd", candidate="ASU_GD", baseline="NPO_NLL"),
    Pair("kl", candidate="ASU_KL", baseline="NPO_KL"),
)

#: The design section: peak RSS of ASU_KL as built (one frozen copy) vs the two-copy layout.
DESIGN = Pair("design", candidate="ASU_KL_2COPIES", baseline="ASU_KL", time_goal=None, rss_goal=None)


def check_comparisons(cfg: dict) -> None:
    """Every pair names known methods, a known timing and known goal limits; every scaling
    method is known. Raises ValueError naming the entry and the fix."""
    keys = [pair.key for pair in STEP_PAIRS]
    if len(set(keys)) != len(keys):
        raise ValueError(f"perfbench.comparisons.STEP_PAIRS: pair keys must be unique, got {keys}")
    for pair in (*STEP_PAIRS, DESIGN):
        for method in pair.methods:
            if method not in METHODS:
                raise ValueError(f"pair {pair.key!r} names method {method!r}, which is not in "
                                 f"perfbench.comparisons.METHODS ({', '.join(METHODS)}): add a Method for it")
        if pair.timing not in TIMINGS:
            raise ValueError(f"pair {pair.key!r}: timing {pair.timing!r} is not one of {TIMINGS}")
        for goal in (pair.time_goal, pair.rss_goal):
            if goal is not None and goal not in cfg["goals"]:
                raise ValueError(f"pair {pair.key!r} names goal {goal!r}, which is not in the configuration's "
                                 f"goals ({', '.join(cfg['goals'])}): add its limit to perfbench.config.FULL['goals']")
    for method in cfg["scaling"]["methods"]:
        if method not in METHODS:
            raise ValueError(f"scaling method {method!r} is not in perfbench.comparisons.METHODS "
                             f"({', '.join(METHODS)}): add a Method for it or fix config['scaling']['methods']")
