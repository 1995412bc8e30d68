"""Design: ASU_KL as built (one frozen copy: teacher inside the smoothing context, reference
outside) vs the authors' layout (a second frozen copy as teacher), by peak RSS of a train step.

The points are the shared ``step_rss`` points (see sections.step), planned through ``rss_methods``.
"""

from __future__ import annotations

from ..comparisons import DESIGN
from ..stats import summary
from .step import points_by_method

NAME = "design"
NEEDS_OU = True
POINTS: dict = {}


def plan(cfg) -> list[dict]:
    return []


def rss_methods(cfg) -> list[str]:
    return [DESIGN.baseline, DESIGN.candidate]


def analyse(cfg, results, report) -> None:
    rss = points_by_method(results, "step_rss")
    if DESIGN.candidate not in rss or DESIGN.baseline not in rss:
        return
    one = summary([r["peak_rss_mb"] for r in rss[DESIGN.baseline].values()])
    two = summary([r["peak_rss_mb"] for r in rss[DESIGN.candidate].values()])
    report["design"] = {
        "one_copy": DESIGN.baseline, "two_copies": DESIGN.candidate,
        "one_copy_peak_rss_mb": one, "two_copies_peak_rss_mb": two,
        "difference_mb": two["median"] - one["median"], "ratio_two_over_one": two["median"] / one["median"],
        "model_mb": next(iter(rss[DESIGN.baseline].values()))["model_mb"],
    }


def render(report) -> list[str]:
    d = report.get("design")
    if not d:
        return []
    return ["", "## Design: one frozen copy (as built) vs two copies (teacher + reference)", "",
            "| layout | peak RSS MB |", "|---|---|",
            f"| {d['one_copy']}, one copy | {d['one_copy_peak_rss_mb']['median']:.0f} |",
            f"| two copies | {d['two_copies_peak_rss_mb']['median']:.0f} |", "",
            f"Two copies cost {d['difference_mb']:.0f} MB more ({d['ratio_two_over_one']:.3f}x); one copy of "
            f"the model's weights is {d['model_mb']:.0f} MB."]


def why(goal, report) -> str:
    return f"**{goal['name']}**: {goal['text']}."
