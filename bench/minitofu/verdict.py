"""The study's verdict on the paper's claim, from the seed table: written only once every row
has all its seeds, so a partial study never reads as an answer. Every sentence states measured
figures: the claim's parts, the goal's margins and what each ASU row's teacher is measured to do
(:mod:`.teachers`); no prose about the method is fixed in advance."""

from __future__ import annotations

from .settings import METHODS, SETTINGS, labels
from .teachers import describe


def _mean(rows: dict, method: str, key: str) -> float:
    return rows[method][key]["mean"] or 0.0


def _goal(rows: dict, asu: str, floor: float) -> str:
    """The goal (SETTINGS["goal"]) part by part: met, or missed by how much."""
    goal = SETTINGS["goal"]
    rival = goal["rival"]
    if rival not in rows:
        return f"Goal: not checked ({rival} has no row)."

    def num(x):
        return f"{x:.3g}"

    def pct(x):
        return f"{x:.0%}"

    checks = [  # (what, value, bound, higher is better, format)
        (f"forget_quality >= {rival}'s", _mean(rows, asu, "forget_quality"), _mean(rows, rival, "forget_quality"),
         True, num),
        (f"fluent answers >= {goal['fluent_rate']:.0%}", _mean(rows, asu, "fluent_rate"), goal["fluent_rate"], True,
         pct),
        (f"model_utility >= {floor:.3g}", _mean(rows, asu, "model_utility"), floor, True, num),
        (f"forget ROUGE-L <= {rival}'s", _mean(rows, asu, "forget_Q_A_ROUGE"), _mean(rows, rival, "forget_Q_A_ROUGE"),
         False, num),
    ]
    parts = []
    for what, value, bound, higher, fmt in checks:
        met = value >= bound if higher else value <= bound
        parts.append(f"{what}: {fmt(value)} vs {fmt(bound)}, " + ("met" if met else f"missed by {fmt(abs(value - bound))}"))
    return f"Goal for the best ASU variant ({asu}): " + "; ".join(parts) + "."


def _teachers(report: dict) -> str:
    """What each ASU row's teacher does, as bench/teacher.py measured it on the target."""
    teachers = report.get("teachers") or {}
    if not teachers:
        return ""
    parts = []
    for method, teacher in teachers.items():
        f = teacher.get("figures")
        parts.append(f"{method} ({describe(teacher)}): " + (
            f"its greedy answers are {f['fluent_rate']:.0%} fluent, {f['empty_rate']:.0%} empty, {f['loop_rate']:.0%} "
            f"looping, ROUGE-L recall of the gold answer {f['rouge_l_recall']:.2f}" if f else
            "not measured on the target (run `make bench-teacher` once the target is built)"))
    return " The teachers, measured (bench/results/teacher.md, forget01 questions): " + "; ".join(parts) + "."


def verdict(report: dict) -> str | None:
    """The paper's claim checked in its three parts, each with its figures: the best ASU variant
    (the ``asu`` rows, by mean forget_quality) forgets more than the ``rival`` rows (NPO and IDK),
    keeps model_utility at the rule's floor, and answers at least as fluently as the rivals; then
    the goal's margins and the teachers' measured figures. None until every row has all seeds."""
    rows = {r["method"]: r for r in report["table"]}
    if not rows or any(len(r["seeds"]) < len(SETTINGS["unlearn"]["seeds"]) for r in rows.values()):
        return None

    def fq(method):
        return _mean(rows, method, "forget_quality")

    best = max(rows, key=fq)
    asu = max((m for m in rows if m in METHODS and METHODS[m].role == "asu"), key=fq)
    rivals = [m for m in labels("rival") if m in rows]
    floor = SETTINGS["utility_floor"] * report["models"]["target"]["model_utility"]
    parts = {
        "forgets more than " + " and ".join(rivals): all(fq(asu) > fq(m) for m in rivals),
        f"keeps model_utility >= {floor:.3g}": _mean(rows, asu, "model_utility") >= floor,
        "answers at least as fluently": all(_mean(rows, asu, "fluent_rate") >= _mean(rows, m, "fluent_rate")
                                            for m in rivals),
    }
    text = (f"Highest mean forget_quality: {best} ({fq(best):.3g}); "
            + ", ".join(f"{m} {fq(m):.3g}" for m in rows if m != best) + ". "
            f"Best ASU variant {asu}: model_utility {_mean(rows, asu, 'model_utility'):.3g}, fluent answers "
            f"{_mean(rows, asu, 'fluent_rate'):.0%} (" + ", ".join(f"{m} {_mean(rows, m, 'fluent_rate'):.0%}"
                                                                   for m in rivals)
            + "). " + "; ".join(f"{claim}: {'yes' if ok else 'no'}" for claim, ok in parts.items()) + ". ")
    text += ("The paper's claim holds on this mini-TOFU. " if all(parts.values())
             else "The paper's claim does not hold here as a whole. ")
    return text + _goal(rows, asu, floor) + _teachers(report)
