"""The report's data: every finished evaluation of the plan gathered into the grid, the rule's
picks, the seed table (mean ± std), the sample answers and the costs. Only jobs of the plan
count (an evaluation directory of another study in the work dir is ignored)."""

from __future__ import annotations

import statistics

from .cache import fluency_of, teacher_answers
from .costs import phase_costs
from .evals import is_finished, load_summary, metrics
from .plan import Plan, run_name
from .selection import check_memorisation, choose
from .settings import METHODS, SETTINGS, labels, sample_labels
from .teachers import measured, row_teacher

#: the seed table's columns taken from OU's aggregates
TABLE_METRICS = ("forget_quality", "model_utility", "forget_truth_ratio", "forget_Q_A_ROUGE", "privleak")


def mean_std(values: list[float | None]) -> dict:
    """Mean, sample std (0 for one value) and count of the values that are not None."""
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def finished_runs(plan: Plan) -> dict[str, dict]:
    """run name -> its method, lr and seed, for every run of the plan whose evaluation finished."""
    u, runs = SETTINGS["unlearn"], {}
    for method in METHODS:
        for lr in u["lrs"]:
            for seed in u["seeds"]:
                name = run_name(method, lr, seed)
                if is_finished(plan.eval_dir(name)):
                    runs[name] = {"method": method, "lr": lr, "seed": seed}
    return runs


def build_report(plan: Plan) -> dict:
    u = SETTINGS["unlearn"]
    runs = finished_runs(plan)
    evals = {name: plan.eval_dir(name) for name in ("target", "retain", *runs)}
    summaries = {name: load_summary(path) for name, path in evals.items()}
    fluency = fluency_of(evals, [plan.retain, plan.base]) if plan.retain.is_dir() else {}
    report = {"settings": SETTINGS, "methods": {label: row.as_json() for label, row in METHODS.items()},
              "models": {}, "grid": [], "chosen": {}, "table": [], "samples": [], "costs": phase_costs(plan.work)}
    for name in ("target", "retain"):
        if summaries.get(name):
            report["models"][name] = {**metrics(summaries[name]), "fluency": _fluency_brief(fluency.get(name))}
    if "target" in report["models"] and "retain" in report["models"]:
        report["memorisation"] = check_memorisation(summaries["target"], summaries["retain"])
    grid = {(r["method"], r["lr"]): summaries[n] for n, r in runs.items() if r["seed"] == u["grid_seed"]}
    report["grid"] = [{"method": m, "lr": lr, **metrics(s),
                       "fluency": _fluency_brief(fluency.get(run_name(m, lr, u["grid_seed"])))}
                      for (m, lr), s in grid.items()]
    if "target" in report["models"]:
        report["chosen"] = choose(grid, report["models"]["target"]["model_utility"])
    for method, pick in report["chosen"].items():
        names = [n for n in (run_name(method, pick["lr"], seed) for seed in u["seeds"]) if n in runs]
        row = {"method": method, "lr": pick["lr"], "seeds": [runs[n]["seed"] for n in names]}
        for key in TABLE_METRICS:
            row[key] = mean_std([summaries[n][key] for n in names])
        row["fluent_rate"] = mean_std([fluency[n]["fluent_rate"] for n in names if n in fluency])
        row["median_nll"] = mean_std([fluency[n]["median_nll"] for n in names if n in fluency])
        report["table"].append(row)
    report["teachers"] = row_teachers(plan, report["chosen"])
    report["samples"] = sample_answers(summaries, report["chosen"])
    if report["samples"] and plan.target.is_dir():
        chosen = [t for t in report["teachers"].values() if t["chosen"]]
        teacher = teacher_answers(plan, [sample["question"] for sample in report["samples"]], chosen)
        for sample, answers in zip(report["samples"], teacher):
            sample["answers"].update(answers)
    return report


def row_teachers(plan: Plan, chosen: dict) -> dict[str, dict]:
    """The teacher each ASU row was trained towards (seed 0 of its chosen lr, from the run record)
    with its measured figures (:mod:`.teachers`; ``figures`` None where not measured)."""
    teachers = {}
    for method in labels("asu"):
        if method in chosen:
            run_dir = plan.run_dir(run_name(method, chosen[method]["lr"], SETTINGS["unlearn"]["grid_seed"]))
            teacher = row_teacher(run_dir)
            if teacher is not None:
                teachers[method] = {**teacher, "figures": measured(teacher)}
    return teachers


def _fluency_brief(f: dict | None) -> dict | None:
    return None if f is None else {k: f[k] for k in ("fluent_rate", "median_nll", "mean_repetition", "empty", "n")}


def sample_answers(summaries: dict, chosen: dict) -> list[dict]:
    """The first SETTINGS['samples'] forget questions with the answers of the target, the retain
    model and every row of :func:`.settings.sample_labels` (seed 0 of its chosen lr)."""
    sources = {"target": "target", "retain": "retain"}
    for method in sample_labels():
        if method in chosen:
            sources[method] = run_name(method, chosen[method]["lr"], SETTINGS["unlearn"]["grid_seed"])
    available = {label: summaries.get(name) for label, name in sources.items() if summaries.get(name)}
    if "target" not in available:
        return []
    keys = sorted(available["target"]["generations"], key=int)[: SETTINGS["samples"]]
    rows = []
    for key in keys:
        first = available["target"]["generations"][key]
        answers = {label: s["generations"].get(key, {}).get("generation") for label, s in available.items()}
        rows.append({"question": first["question"], "ground_truth": first["ground_truth"], "answers": answers})
    return rows
