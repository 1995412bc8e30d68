"""The study's fixed selection rule and the gate before the seeds phase.

Selection rule (fixed before any result): per method, among its grid settings with
model_utility >= 0.9 x the target's, the largest forget_quality (a tie: the smaller lr, the
gentler change); if none qualifies, the largest model_utility. The same rule for every method.
Seeds 0-2 of that setting are reported.

The memorisation check (issue 7's bar) gates the seeds phase: unlearning a target that never
knew the forget authors would measure nothing.
"""

from __future__ import annotations

import logging

from asu_plugin.openunlearning.jobs import OUJob

from .evals import load_summary
from .plan import Plan, run_name
from .settings import METHODS, SETTINGS

logger = logging.getLogger(__name__)


def check_memorisation(target: dict, retain: dict) -> dict:
    """Does the target really know the forget authors (issue 7's bar)? ``ok`` and the figures."""
    m = SETTINGS["memorisation"]
    gap = target["forget_Q_A_ROUGE"] - retain["forget_Q_A_ROUGE"]
    fq = target["forget_quality"]
    ok = gap >= m["rouge_gap"] and fq is not None and fq < m["forget_quality_max"]
    return {"rouge_gap": gap, "target_forget_quality": fq, "ok": ok,
            "text": f"forget ROUGE-L recall gap target - retain {gap:.3f} (need >= {m['rouge_gap']}), target "
                    f"forget_quality {fq} (need < {m['forget_quality_max']})"}


def choose(grid: dict[tuple[str, float], dict], target_utility: float) -> dict[str, dict]:
    """The fixed selection rule (module docstring), per method whose every grid lr is evaluated.
    ``grid``: (method, lr) -> the seed-0 summary (None: not evaluated yet)."""
    floor = SETTINGS["utility_floor"] * target_utility
    chosen = {}
    for method in METHODS:
        rows = [(lr, r) for (m, lr), r in grid.items() if m == method and r is not None]
        if len(rows) < len(SETTINGS["unlearn"]["lrs"]):
            continue
        ok = [(lr, r) for lr, r in rows if r["model_utility"] >= floor]
        if ok:
            lr, _ = max(ok, key=lambda item: (item[1]["forget_quality"] or 0.0, -item[0]))
            chosen[method] = {"lr": lr, "why": f"max forget_quality with model_utility >= {floor:.4f}"}
        else:
            lr, _ = max(rows, key=lambda item: item[1]["model_utility"])
            chosen[method] = {"lr": lr, "why": f"no lr kept model_utility >= {floor:.4f}: max model_utility"}
    return chosen


def seed_jobs_ready(plan: Plan, chosen: set[str]) -> list[OUJob]:
    """The seeds phase of every method whose whole grid is evaluated, once the target is shown to
    memorise; each method once (``chosen`` keeps the methods already given). The rule looks at a
    method's own grid only, so choosing early picks what choosing at the end would."""
    u = SETTINGS["unlearn"]
    target, retain = load_summary(plan.eval_dir("target")), load_summary(plan.eval_dir("retain"))
    if target is None or retain is None or not check_memorisation(target, retain)["ok"]:
        return []
    grid = {(m, lr): load_summary(plan.eval_dir(run_name(m, lr, u["grid_seed"])))
            for m in METHODS if m not in chosen for lr in u["lrs"]}
    picks = {m: c["lr"] for m, c in choose(grid, target["model_utility"]).items()}
    for method, lr in picks.items():
        logger.info("%s: lr %g chosen by the rule; seeds %s join the queue", method, lr,
                    [s for s in u["seeds"] if s != u["grid_seed"]])
    chosen.update(picks)
    return plan.seed_jobs(picks)
