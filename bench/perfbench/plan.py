"""The ordered list of measurement points of a run.

Cheap sections first (teacher, loss), then the train-step points, then the shared steady-state
RSS points of every section that asked for them (``rss_methods``), interleaved across methods
and alternating in order every repeat so no method always runs first, then scaling. A point is
planned once even when two sections need it (named by what it measures).
"""

from __future__ import annotations

from .sections import SECTIONS

PLAN_ORDER = ("teacher", "loss", "step", "design", "scaling")
_RSS_BEFORE = "scaling"  # the shared RSS points run after step and design's own points


def _rss_points(cfg, requested: dict[str, str]) -> list[dict]:
    """step_rss points for every requested method (method -> first section that asked), interleaved."""
    step = cfg["step"]
    methods = list(requested)
    points = []
    for rep in range(step["rss_reps"]):
        for method in (methods if rep % 2 == 0 else methods[::-1]):
            points.append({"name": f"step_rss:{method}:r{rep}", "kind": "step_rss", "method": method,
                           "needs_ou": True, "section": requested[method],
                           "batch": step["batch"], "seq": step["seq"], "prompt": step["prompt"]})
    return points


def build_plan(cfg, sections, ou_ok: bool) -> list[dict]:
    """Points of the chosen sections (those needing OU only when ``ou_ok``), de-duplicated by name."""
    chosen = [name for name in PLAN_ORDER if name in sections and (ou_ok or not SECTIONS[name].NEEDS_OU)]
    plan: dict[str, dict] = {}
    rss: dict[str, str] = {}
    for name in chosen:
        module = SECTIONS[name]
        if name == _RSS_BEFORE:
            for spec in _rss_points(cfg, rss):
                plan.setdefault(spec["name"], spec)
            rss = {}
        for spec in module.plan(cfg):
            plan.setdefault(spec["name"], {**spec, "section": name})
        for method in getattr(module, "rss_methods", lambda _cfg: [])(cfg):
            rss.setdefault(method, name)
    for spec in _rss_points(cfg, rss):
        plan.setdefault(spec["name"], spec)
    return list(plan.values())
