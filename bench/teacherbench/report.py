"""``teacher.json`` / ``teacher.md`` / ``teacher.png`` from the measured cells.

Every sentence of the Markdown's answers is built here from the figures (thresholds named in
the text), so a rerun on other models or data writes what those show; nothing about teacher
behaviour is fixed prose.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from asu_plugin.core.atomic import atomic_path, write_json_atomic, write_text_atomic
from asu_plugin.core.teacher_choice import DEFAULT_RULE, LAYER_SETS, TAUS

PAPER = "tau=2.3|all"
FLUENT_ENOUGH = 0.9  # "keeps it fluent": at least this share of fluent greedy answers, none empty
MOSTLY = 0.5


def _f(value, spec=".2f", none="n/a"):
    return none if value is None else format(value, spec)


def _pct(value):
    return "n/a" if value is None else f"{value:.0%}"


def cell_rows(model: dict) -> list[dict]:
    """One flat row per cell: the teacher-forced and generated figures side by side."""
    rows = []
    for key, tf in model["teacher_forced"].items():
        gen = model["generated"].get(key, {})
        by = tf.get("by_class") or {}
        rows.append({
            "cell": key,
            "special_first": tf.get("special_first"),
            "special_first_top": tf.get("special_first_top"),
            "special_nonfinal": tf.get("special_nonfinal"),
            "eot_nonfinal": tf.get("eot_nonfinal"),
            "kl_factual": (by.get("factual") or {}).get("kl"),
            "kl_function": (by.get("function") or {}).get("kl"),
            "nll_up_factual": (by.get("factual") or {}).get("nll_increase"),
            "nll_up_function": (by.get("function") or {}).get("nll_increase"),
            "empty_rate": gen.get("empty_rate"),
            "loop_rate": gen.get("loop_rate"),
            "fluent_rate": gen.get("fluent_rate"),
            "rouge_l_recall": gen.get("rouge_l_recall"),
        })
    return rows


def answers_in_words(model: dict) -> dict[str, list[str]]:
    """The Markdown's two questions, answered from ``model``'s figures."""
    rows = {r["cell"]: r for r in cell_rows(model)}
    plain, paper = rows.get("plain"), rows.get(PAPER)
    why = []
    if paper and plain:
        why.append(
            f"At tau 2.3 on all {model['num_layers']} layers, {_pct(paper['empty_rate'])} of the teacher's greedy "
            f"answers are empty, {_pct(paper['loop_rate'])} loop and {_pct(paper['fluent_rate'])} are fluent "
            f"(plain model: {_pct(plain['empty_rate'])} / {_pct(plain['loop_rate'])} / {_pct(plain['fluent_rate'])})."
        )
        top, mass = paper["special_first_top"], paper["special_first"]
        if top is not None and top >= MOSTLY:
            why.append(
                f"It ends its turn at once: a special token is its most likely first answer token on {_pct(top)} of "
                f"the forget questions (mean special-token mass there {_f(mass, '.3f')}, plain {_f(plain['special_first'], '.3f')}). "
                "The student, trained towards this distribution at the first answer position, learns to answer nothing."
            )
        else:
            why.append(
                f"End-of-turn is not what it teaches at the first answer position: a special token tops it on only "
                f"{_pct(top)} of the questions (mean mass {_f(mass, '.3f')}), and at the answer positions inside the "
                f"gold answers the special mass is {_f(paper['special_nonfinal'], '.4f')}."
            )
        kf, kn = paper["kl_factual"], paper["kl_function"]
        if kf is not None and kn is not None:
            verdict = ("as much as" if kn >= 0.8 * kf else "less than")
            broken = kn >= 0.8 * kf and (paper["fluent_rate"] or 0) < MOSTLY
            why.append(
                f"It moves function tokens {verdict} factual ones: KL(teacher || original) {_f(kn)} nats/token on "
                f"function tokens vs {_f(kf)} on factual tokens; function-token NLL rises by "
                f"{_f(paper['nll_up_function'])} nats/token (factual {_f(paper['nll_up_factual'])})."
                + (" Smoothing every layer takes the grammar with the facts: the teacher no longer forms sentences."
                   if broken else "")
            )
        if (paper["empty_rate"] or 0) < MOSTLY and (paper["loop_rate"] or 0) >= MOSTLY:
            why.append(
                f"On this model it teaches loops more than empty answers ({_pct(paper['loop_rate'])} of its answers loop); "
                "where empty answers come from, the next paragraph says."
            )
    fluent = [
        r for key, r in rows.items()
        if key != "plain" and r["fluent_rate"] is not None and r["fluent_rate"] >= FLUENT_ENOUGH
        and r["empty_rate"] == 0 and (r["nll_up_factual"] or 0) >= DEFAULT_RULE.min_removal
    ]
    fluent.sort(key=lambda r: -(r["nll_up_factual"] or 0))
    keep = []
    if fluent:
        keep.append(
            f"{len(fluent)} of {len(rows) - 1} teachers keep at least {FLUENT_ENOUGH:.0%} of their greedy answers fluent "
            f"with none empty while raising the factual-token NLL by at least {DEFAULT_RULE.min_removal:g} nats/token. "
            "The five that forget most:"
        )
        keep += [
            f"{label(r['cell'])}: factual NLL +{_f(r['nll_up_factual'])}, function +{_f(r['nll_up_function'])}, fluent "
            f"{_pct(r['fluent_rate'])}, loops {_pct(r['loop_rate'])}, ROUGE-L recall {_f(r['rouge_l_recall'])} "
            f"(plain {_f(plain['rouge_l_recall']) if plain else 'n/a'})"
            for r in fluent[:5]
        ]
    else:
        keep.append(
            f"No teacher keeps {FLUENT_ENOUGH:.0%} of its greedy answers fluent with none empty while raising the factual "
            f"NLL by {DEFAULT_RULE.min_removal:g} nats/token on this model."
        )
    return {"why": why, "fluent_and_forgetting": keep}


def mechanism(model: dict) -> dict:
    """Is end-of-turn mass the mechanism of empty answers (issue 14 item 4)? Decided from the
    cells whose greedy answers are mostly empty: a special token tops the first answer position."""
    rows = cell_rows(model)
    empty = [r for r in rows if (r["empty_rate"] or 0) >= MOSTLY]
    explained = [r for r in empty if (r["special_first_top"] or 0) >= MOSTLY]
    inside = max((r["special_nonfinal"] or 0) for r in rows)
    return {
        "cells_mostly_empty": [r["cell"] for r in empty],
        "explained_by_first_position": [r["cell"] for r in explained],
        "max_special_nonfinal": inside,
        "first_position_is_the_mechanism": bool(empty) and len(explained) == len(empty),
        "inside_answer_mass_matters": inside > DEFAULT_RULE.special_nonfinal_max,
    }


def mechanism_words(model: dict) -> list[str]:
    """The item-4 question in sentences: does end-of-turn mass explain the empty answers, and where?"""
    mech = mechanism(model)
    rows = {r["cell"]: r for r in cell_rows(model)}
    empty, explained = mech["cells_mostly_empty"], mech["explained_by_first_position"]
    out = []
    if not empty:
        out.append("No teacher's greedy answers are mostly empty on this model.")
    else:
        tops = ", ".join(f"{label(c)} ({_pct(rows[c]['special_first_top'])})" for c in empty)
        out.append(f"Teachers whose greedy answers are mostly empty, with the share of questions on which a special token "
                   f"is their most likely first answer token: {tops}.")
        out.append("End-of-turn at the first answer position explains " + (
            "every one of them." if len(explained) == len(empty) else f"{len(explained)} of the {len(empty)}."))
    paper = rows.get(PAPER)
    if paper:
        out.append(f"The paper setting (tau 2.3, all layers) puts a special token first on {_pct(paper['special_first_top'])} "
                   f"of the questions and its answers are {_pct(paper['empty_rate'])} empty: "
                   + ("end-of-turn mass is its mechanism." if PAPER in explained else
                      "end-of-turn mass is not its mechanism on this model."))
    out.append(f"Inside the gold answers the special-token mass peaks at {mech['max_special_nonfinal']:.4f} over all "
               f"teachers ({'above' if mech['inside_answer_mass_matters'] else 'below'} the rule's bound "
               f"{DEFAULT_RULE.special_nonfinal_max:g}): "
               + ("some teachers would teach the student to stop mid-answer." if mech["inside_answer_mass_matters"]
                  else "none teaches the student to stop mid-answer."))
    return out


def markdown(report: dict) -> str:
    lines = ["# The ASU teacher on a small model: why it teaches empty answers, and which one stays fluent", "",
             "Generated by `bench/teacher.py` (`make bench-teacher`) from measured figures; see "
             "`teacher.json` for every number and `teacher.png` for the plots.", ""]
    lines += [f"* forget rows: {report['rows']} TOFU forget01 QA pairs (teacher-forced); greedy answers to the first "
              f"{report['n_generate']} questions, {report['max_new_tokens']} new tokens",
              f"* CPU time: {report['cost']['cpu_s'] / 3600:.2f} CPU-hours in all "
              f"({', '.join(f'{k} {v / 60:.1f} min' for k, v in report['cost']['by_model'].items())})"]
    for name, why in report.get("skipped", {}).items():
        lines.append(f"* skipped {name}: {why}")
    lines.append("")
    for name, model in report["models"].items():
        lines += [f"## {name}: `{model['model_dir']}` ({model['num_layers']} layers)", ""]
        words = answers_in_words(model)
        lines += ["**Why does the all-layer teacher at tau 2.3 teach empty answers?** " + " ".join(words["why"]), ""]
        lines += ["**Which settings keep it fluent while it forgets?** " + words["fluent_and_forgetting"][0], ""]
        lines += [f"* {line}" for line in words["fluent_and_forgetting"][1:]] + [""]
        lines += ["**End-of-turn mass as the mechanism (item 4).** " + " ".join(mechanism_words(model)), ""]
        choice = model.get("choice")
        if choice:
            if choice.get("refused"):
                lines += [f"**Automatic choice:** refused: {choice['refused']}", ""]
            else:
                cost = choice["cost_s"]
                finalists = "; ".join(f"{f['candidate']}: " + ("; ".join(f["failures"]) or "passes")
                                      for f in choice.get("finalists", []))
                lines += [f"**Automatic choice (`tau=auto layers=auto`):** {choice['choice']['key']} (finalists in rank "
                          f"order: {finalists}); it took {cost['total']:.0f} s wall, {cost.get('cpu', 0):.0f} CPU-s"
                          f"{' (read from the cache now)' if choice.get('cache', {}).get('hit') else ''}.", ""]
        lines += table(cell_rows(model))
        lines += ["", "Sample greedy answers (first 3 questions):", ""]
        for key in ("plain", PAPER, *([choice_cell(model)] if choice_cell(model) else [])):
            answers = model["generated"].get(key, {}).get("answers", [])[:3]
            lines.append(f"* {label(key)}: " + " / ".join(repr(a[:90]) if a else "(empty)" for a in answers))
        lines.append("")
    return "\n".join(lines) + "\n"


def choice_cell(model: dict) -> Optional[str]:
    choice = (model.get("choice") or {}).get("choice")
    if not choice:
        return None
    return f"tau={choice['tau']:g}|{choice['layer_set']}"


def label(key: str) -> str:
    """``tau=2.3|first third`` -> ``tau 2.3, first third`` (a ``|`` would split a Markdown table cell)."""
    return key if "|" not in key else key.replace("=", " ").replace("|", ", ")


def table(rows: list[dict]) -> list[str]:
    head = ("| teacher | special mass @1st (top) | special mass inside | KL fact | KL func | NLL+ fact | NLL+ func "
            "| empty | loops | fluent | ROUGE-L rec |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        out.append(
            f"| {label(r['cell'])} | {_f(r['special_first'], '.3f')} ({_pct(r['special_first_top'])}) | "
            f"{_f(r['special_nonfinal'], '.4f')} | {_f(r['kl_factual'])} | {_f(r['kl_function'])} | "
            f"{_f(r['nll_up_factual'])} | {_f(r['nll_up_function'])} | {_pct(r['empty_rate'])} | {_pct(r['loop_rate'])} | "
            f"{_pct(r['fluent_rate'])} | {_f(r['rouge_l_recall'])} |"
        )
    return out


def plot(report: dict, path: Path) -> Path:
    from matplotlib.figure import Figure

    models = list(report["models"].items())
    fig = Figure(figsize=(13, 3.8 * max(1, len(models))))
    markers = dict(zip(LAYER_SETS, "osD^v<"))
    colours = {tau: f"C{i}" for i, tau in enumerate(TAUS)}
    for row, (name, model) in enumerate(models):
        cells = [r for r in cell_rows(model) if r["cell"] != "plain"]
        axes = [fig.add_subplot(len(models), 3, 3 * row + k + 1) for k in range(3)]
        for r in cells:
            tau, layer_name = float(r["cell"].split("|")[0][4:]), r["cell"].split("|")[1]
            style = {"marker": markers[layer_name], "color": colours[tau], "s": 36}
            axes[0].scatter(r["special_first"] or 0, r["special_first_top"] or 0, **style)
            axes[1].scatter(r["kl_function"] or 0, r["kl_factual"] or 0, **style)
            if r["fluent_rate"] is not None:
                axes[2].scatter(r["nll_up_factual"] or 0, r["fluent_rate"], **style)
        limit = max([(r["kl_factual"] or 0) for r in cells] + [(r["kl_function"] or 0) for r in cells] + [0.1])
        axes[1].plot([0, limit], [0, limit], "k:", lw=0.8)
        axes[0].axvline(DEFAULT_RULE.special_first_max, color="k", ls=":", lw=0.8)  # the rule's screen bounds
        axes[2].axvline(DEFAULT_RULE.min_removal, color="k", ls=":", lw=0.8)
        chosen = next((r for r in cells if r["cell"] == choice_cell(model)), None)
        if chosen:  # the automatic choice, ringed
            axes[0].scatter(chosen["special_first"] or 0, chosen["special_first_top"] or 0, s=160, facecolors="none", edgecolors="k")
            axes[1].scatter(chosen["kl_function"] or 0, chosen["kl_factual"] or 0, s=160, facecolors="none", edgecolors="k")
            if chosen["fluent_rate"] is not None:
                axes[2].scatter(chosen["nll_up_factual"] or 0, chosen["fluent_rate"], s=160, facecolors="none", edgecolors="k")
        titles = [("special mass at 1st answer position", "share of questions where it tops"),
                  ("KL(teacher||original), function tokens", "KL, factual tokens"),
                  ("factual-token NLL increase (nats)", "fluent greedy answers")]
        for ax, (x, y) in zip(axes, titles):
            ax.set_xlabel(x, fontsize=8)
            ax.set_ylabel(y, fontsize=8)
            ax.grid(True, alpha=0.3)
        axes[0].set_title(f"{name} (ringed: the automatic choice; dotted: the rule's bounds)", fontsize=9, loc="left")
    handles = [fig.axes[0].scatter([], [], marker=m, color="grey", label=n) for n, m in markers.items()]
    handles += [fig.axes[0].scatter([], [], marker="o", color=c, label=f"tau {t:g}") for t, c in colours.items()]
    fig.legend(handles=handles, loc="upper center", ncol=10, fontsize=7)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def write(report: dict, out_dir: Path) -> tuple[Path, Path, Path]:
    out_dir = Path(out_dir)
    return (write_json_atomic(out_dir / "teacher.json", report),
            write_text_atomic(out_dir / "teacher.md", markdown(report)),
            plot(report, out_dir / "teacher.png"))
