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

from .config import ASU_ARGS, GRADDIFF_ARGS, LORA_ARGS, NPO_ARGS

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
    #: a figure (MB) the candidate's processes report that its RSS goal allows on top of the
    #: baseline's (the teacher cache's own size): met when candidate <= limit x baseline + it
    rss_allowance: str | None = None
    #: how the pair was built, for the report (e.g. how a baseline without a LoRA path got one)
    note: str = ""

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
    # issue 17: one copy of the weights
    "GradDiff": Method("trainer.unlearn.grad_diff:GradDiff", GRADDIFF_ARGS),  # OpenUnlearning's
    "ASU_GD_CACHE": Method("perfbench.bench_trainers:ASU_GD_CachedTeacher", {**ASU_ARGS, "teacher_cache": True}),
    "ASU_KL_LORA": Method(f"{_ASU}:ASU_KL", {**ASU_ARGS, "lora": LORA_ARGS}),
    "NPO_KL_LORA": Method("perfbench.bench_trainers:NPO_LoRA", {**NPO_ARGS, "retain_loss_type": "KL", "lora": LORA_ARGS}),
})

STEP_PAIRS: tuple[Pair, ...] = (
    Pair("gd", candidate="ASU_GD", baseline="NPO_NLL"),
    Pair("kl", candidate="ASU_KL", baseline="NPO_KL"),
    # issue 17: the teacher cache lets ASU_GD drop its frozen copy; a LoRA student needs none
    Pair("gd_cache", candidate="ASU_GD_CACHE", baseline="GradDiff", timing="fresh", time_goal="cache_time",
         rss_goal="cache_rss", rss_allowance="teacher_cache_mb",
         note="ASU_GD with teacher_cache=true: the cache is built (and the frozen copy released) before the "
              "measured steps; its peak RSS is the steps' (the build's own peak is reported beside it)"),
    Pair("kl_lora", candidate="ASU_KL_LORA", baseline="ASU_KL", timing="fresh", time_goal=None, rss_goal="lora_rss",
         note="ASU_KL with lora r=16 on q/k/v/o_proj (teacher and reference: the student's base, adapters off) "
              "vs full ASU_KL (one frozen copy)"),
    Pair("kl_lora_npo", candidate="ASU_KL_LORA", baseline="NPO_KL_LORA", timing="fresh", time_goal=None,
         rss_goal=None,
         note="OU has no LoRA path: NPO_KL_LORA is OU's NPO given the same PeftModel student (our lora.wrap, "
              "before NPO's __init__), so NPO's reference is its deep copy of that PeftModel (full weights + "
              "adapters)"),
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
        if pair.rss_allowance and not pair.rss_goal:
            raise ValueError(f"pair {pair.key!r}: rss_allowance needs an rss_goal")
        for goal in (pair.time_goal, pair.rss_goal):
            if goal is not None and goal not in cfg["goals"]:
                raise ValueError(f"pair {pair.key!r} names goal {goal!r}, which is not in the configuration's "
                                 f"goals ({', '.join(cfg['goals'])}): add its limit to perfbench.config.FULL['goals']")
    for method in cfg["scaling"]["methods"]:
        if method not in METHODS:
            raise ValueError(f"scaling method {method!r} is not in perfbench.comparisons.METHODS "
                             f"({', '.join(METHODS)}): add a Method for it or fix config['scaling']['methods']")
