"""The study's verdict on the paper's claim, from the seed table: written only once every row
has all its seeds, so a partial study never reads as an answer."""

from __future__ import annotations

from .settings import METHODS, SETTINGS, labels


def verdict(report: dict) -> str | None:
    """The paper's claim checked in its three parts, each with its figures: the best ASU variant
    (the ``asu`` rows, by mean forget_quality) forgets more than the ``rival`` rows (NPO and IDK),
    keeps model_utility at the rule's floor, and answers at least as fluently as the rivals.
    None until every row has all seeds."""
    rows = {r["method"]: r for r in report["table"]}
    if not rows or any(len(r["seeds"]) < len(SETTINGS["unlearn"]["seeds"]) for r in rows.values()):
        return None

    def mean(method, key):
        return rows[method][key]["mean"] or 0.0

    def fq(method):
        return mean(method, "forget_quality")

    best = max(rows, key=fq)
    asu = max((m for m in rows if m in METHODS and METHODS[m].role == "asu"), key=fq)
    rivals = [m for m in labels("rival") if m in rows]
    floor = SETTINGS["utility_floor"] * report["models"]["target"]["model_utility"]
    parts = {
        "forgets more than " + " and ".join(rivals): all(fq(asu) > fq(m) for m in rivals),
        f"keeps model_utility >= {floor:.3g}": mean(asu, "model_utility") >= floor,
        "answers at least as fluently": all(mean(asu, "fluent_rate") >= mean(m, "fluent_rate") for m in rivals),
    }
    text = (f"Highest mean forget_quality: {best} ({fq(best):.3g}); "
            + ", ".join(f"{m} {fq(m):.3g}" for m in rows if m != best) + ". "
            f"Best ASU variant {asu}: model_utility {mean(asu, 'model_utility'):.3g}, fluent answers "
            f"{mean(asu, 'fluent_rate'):.0%} (" + ", ".join(f"{m} {mean(m, 'fluent_rate'):.0%}" for m in rivals)
            + "). " + "; ".join(f"{claim}: {'yes' if ok else 'no'}" for claim, ok in parts.items()) + ". ")
    if all(parts.values()):
        return text + "The paper's claim holds on this mini-TOFU."
    text += "The paper's claim does not hold here as a whole. Next to try: "
    if not parts["answers at least as fluently"]:
        text += ("smooth only the shallow layers (at tau 2.3 on all layers this model's teacher ends its turn at "
                 "once, so ASU learns empty answers; on layers 0-9 it answers fluently with wrong facts: see the "
                 "teacher's sample answers) or a lower tau; ")
    return text + ("a tau in the paper's stable range 2.0-2.8 chosen per layer set with the tau-probe "
                   "(`asu-probe`, which ranks (tau, layers) by factual/function separation on this model), and more "
                   "epochs for its gamma=0.1 forget term.")
